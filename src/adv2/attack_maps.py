"""The target maps an attack is given: each image's map of a kind (``benign``, ``shape``,
``other``; :mod:`adv2.target_maps`), seeded per image, and the pool ``other`` maps come from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adv2 import target_maps
from adv2.data import to_tensor
from adv2.interpreters import Interpreter
from adv2.target_classes import seed_of


@dataclass
class Pool:
    """The image set an ``other`` target map is drawn from: float N×3×H×W, labels, preds."""

    x: torch.Tensor
    labels: torch.Tensor
    preds: torch.Tensor

    @classmethod
    def of(cls, images: np.ndarray, labels: torch.Tensor, preds: torch.Tensor,
           device: torch.device) -> Pool:
        """The pool of uint8 N×H×W×3 ``images``, their labels and predictions, on ``device``."""
        return cls(to_tensor(images).to(device), labels.to(device), preds.to(device))


def target_maps_for(kind: str, interpreter: Interpreter, keys: list[str], seed: int,
                    targets: torch.Tensor, benign: torch.Tensor, pool: Pool | None,
                    size: int) -> torch.Tensor:
    """Each image's target map (N×1×h×w) of ``kind``, seeded per image (:func:`seed_of`)."""
    if kind == "benign":
        return benign
    maps = []
    batch_seeds = interpreter.seeds
    for j, key in enumerate(keys):
        image_seed = seed_of(seed, key)
        if kind == "shape":  # the same shape at each interpreter's resolution the maps hold
            parts = interpreter.parts(benign[j:j + 1], (size, size))
            maps.append(interpreter.join({
                n: target_maps.shape(1, tuple(p.shape[-2:]), image_seed, size).to(benign)
                for n, p in parts.items()}))
        elif kind == "other":  # the pool image's map drawn with the attacked image's seed
            interpreter.use_seeds(None if batch_seeds is None else batch_seeds[j:j + 1].tolist())
            maps.append(target_maps.other(interpreter, targets[j:j + 1], pool.x,
                                              pool.labels, image_seed, pool.preds))
        else:
            raise ValueError(f"unknown target map kind {kind!r}")
    interpreter.use_seeds(None if batch_seeds is None else batch_seeds.tolist())
    return torch.cat(maps)
