"""The images an RTS network trains on: a seeded hold-out split of the training images and the
metadata ``rts.pt`` records of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from adv2.data import Sample


@dataclass
class HoldOut:
    """A split of the training images: ``train``, the samples trained on (in their order), and
    ``held``, the sorted keys of those left out for evaluating the masks.

    Examples:
        >>> split = HoldOut.split(samples, 2, seed=0)  # doctest: +SKIP
        >>> split.meta("adv2 train-rts ...", "photos", 0)["holdout"]  # doctest: +SKIP
        ['img_2', 'img_3']
    """

    train: list[Sample]
    held: list[str]

    @classmethod
    def split(cls, samples: Sequence[Sample], n: int, seed: int) -> HoldOut:
        """Hold out ``n`` of ``samples``, a choice seeded by ``seed``."""
        order = np.random.default_rng(seed).permutation(len(samples))
        return cls([samples[i] for i in sorted(order[n:])],
                   sorted(samples[i].key for i in order[:n]))

    def meta(self, command: str, data: str, seed: int) -> dict:
        """The metadata of the run that ``rts.pt`` records: the ``command`` line, the ``data``
        folder, the number of training images, the held-out and trained-on keys and the
        ``seed``."""
        return {"command": command, "data": data, "n_train": len(self.train),
                "holdout": self.held, "trained_on": sorted(s.key for s in self.train),
                "seed": seed}
