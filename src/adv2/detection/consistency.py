"""How far several interpreters' maps of one image disagree: the ensemble detector's score and
the soft version an adaptive attack differentiates.

Maps of different resolutions are first average-pooled to the coarsest one's (GRAD's 56×56 to
CAM's 7×7 for a 224² input). With more than two maps, the measure is the mean over pairs.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from adv2 import metrics
from adv2.interpreters import minmax


def pooled(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every N×1×h×w map average-pooled to the resolution of the map with the fewest pixels.

    Examples:
        >>> [m.shape[-1] for m in pooled([torch.rand(2, 1, 7, 7, device="cpu"),
        ...                                torch.rand(2, 1, 56, 56, device="cpu")])]
        [7, 7]
    """
    size = min((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    return [m if tuple(m.shape[-2:]) == size else F.adaptive_avg_pool2d(m, size) for m in maps]


def _pairwise(maps: Sequence[torch.Tensor],
              distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(N,) mean of ``distance`` over every pair of the pooled maps."""
    if len(maps) < 2:
        raise ValueError(f"consistency needs at least two maps, got {len(maps)}")
    same = pooled(maps)
    return torch.stack([distance(a, b) for a, b in combinations(same, 2)]).mean(dim=0)


def inconsistency(maps: Sequence[torch.Tensor],
                  ks: tuple[float, ...] = metrics.DEFAULT_KS) -> torch.Tensor:
    """1 − the IoU of the maps' top-k% pixel sets (:func:`adv2.metrics.iou`), averaged over
    ``ks`` and over pairs of maps: 0 for maps that rank their pixels alike, 1 for disjoint
    top sets.

    Shape:
        maps: k ≥ 2 tensors N×1×h_i×w_i. Returns (N,) in [0, 1].
    """
    return _pairwise(maps, lambda a, b: 1 - metrics.iou(a, b, ks).mean(dim=1))


def soft_inconsistency(maps: Sequence[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """1 − the soft IoU Σ min(a, b) / Σ max(a, b) of min-max normalised maps, averaged over
    pairs: differentiable where the maps are, 0 for identical maps.

    Shape:
        maps: k ≥ 2 tensors N×1×h_i×w_i. Returns (N,) in [0, 1].
    """
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = minmax(a).flatten(1), minmax(b).flatten(1)
        both = torch.minimum(a, b).sum(dim=1) + eps
        either = torch.maximum(a, b).sum(dim=1) + eps
        return 1 - both / either

    return _pairwise(maps, distance)
