"""Per-image seeds for an attack's own random draws (PGD's random start, a black-box
search): each image draws from its own generator, so that its draws depend neither on the
other images of its batch nor on its place there, and ``adv2 attack``, ``adv2 run`` and the
benchmarks give an image the same draws (a batched forward pass can still differ from one
image's in the last bits of its floats)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Seeded(Protocol):
    """An attack that takes one seed per image of the batch it attacks next."""

    def use_seeds(self, seeds: Sequence[int] | None) -> None:
        """Seed the next call's draws, one seed per image in row order."""


class ImageSeeds:
    """What an attack that draws at random mixes in: :meth:`use_seeds` and
    :meth:`generators`, one host ``torch.Generator`` per image (so every device agrees).

    Examples:
        >>> attack.use_seeds([11, 12])              # doctest: +SKIP
        >>> gens = attack.generators(2, stream=1)   # doctest: +SKIP
    """

    seed: int
    _image_seeds: list[int] | None = None

    def use_seeds(self, seeds: Sequence[int] | None) -> None:
        """Seed the draws of the next calls: one seed per image of the batch they attack, in
        its row order (None: the attack's own ``seed`` for every image)."""
        self._image_seeds = None if seeds is None else [int(s) for s in seeds]

    def generators(self, n: int, stream: int = 0) -> list[torch.Generator]:
        """One generator per image of an ``n``-image batch, for the draws of ``stream`` (a
        number per kind of draw, so that two kinds never share a sequence)."""
        seeds = [self.seed] * n if self._image_seeds is None else self._image_seeds
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds set for {n} images; call use_seeds with one "
                             "seed per image of the batch")
        return [torch.Generator().manual_seed(
            int(np.random.SeedSequence([s, stream]).generate_state(1)[0])) for s in seeds]
