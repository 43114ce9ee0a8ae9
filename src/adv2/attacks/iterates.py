"""What one descent keeps per image: its stopping rule (:class:`Stop`), what an observer is
told of each judgement (:class:`Judgement`), the kept iterates (:class:`Best`) and what the
descent leaves (:class:`Trajectory`). Every tensor here takes its device from the iterates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Stop:
    """Per-sample stopping rule, checked after each judgement.

    ``on_success``: stop as soon as the criterion holds (a warm start). Otherwise, with a map
    loss, stop a successful sample once its best interpretation distance has not improved by a
    relative ``min_gain`` for ``patience`` judgements.
    """

    on_success: bool = False
    patience: int | None = None
    min_gain: float = 1e-3


@dataclass
class Judgement:
    """One judgement of iterates, as an observer of a descent sees it.

    ``rows``: the judged images' indices in the batch and ``x`` their (quantised) iterates;
    ``success`` (bool), ``distance`` (the map loss; 0 without one) and ``passes`` (spent so far
    in this descent) per judged image; ``maps``: the true maps when the interpreter verified
    them, None when the step's own values were judged.
    """

    step: int
    rows: torch.Tensor
    x: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    passes: torch.Tensor
    maps: torch.Tensor | None


@dataclass
class Best:
    """Per-image state of one descent: the kept iterate and its distance, whether one was
    found, how long it has been stale, whether the last judged iterate failed, passes spent,
    and the distance of the first judged iterate (the start; inf if it failed, nan before)."""

    chosen: torch.Tensor
    found: torch.Tensor
    distance: torch.Tensor
    stale: torch.Tensor
    failed: torch.Tensor
    passes: torch.Tensor
    first: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> Best:
        n = x.shape[0]
        flags = torch.zeros(n, dtype=torch.bool, device=x.device)
        return cls(x.clone(), flags, torch.full((n,), math.inf, device=x.device),
                   torch.zeros(n, dtype=torch.long, device=x.device), ~flags,
                   torch.zeros(n, dtype=torch.long, device=x.device),
                   torch.full((n,), math.nan, device=x.device))

    def keep_best(self, rows: torch.Tensor, xs: torch.Tensor, ok: torch.Tensor,
                  distance: torch.Tensor, min_gain: float) -> None:
        """Keep each successful iterate that beats its image's best distance."""
        first = self.first[rows]
        self.first[rows] = torch.where(first.isnan(), torch.where(ok, distance, math.inf),
                                       first)
        ok = ok & distance.isfinite()  # an iterate whose map distance is not finite is no result
        better = ok & (distance < self.distance[rows])
        gain = better & (distance < self.distance[rows] * (1 - min_gain))
        self.stale[rows] = torch.where(gain, 0, self.stale[rows] + 1)
        self.distance[rows] = torch.where(better, distance, self.distance[rows])
        self.found[rows] |= ok
        self.failed[rows] = ~ok
        self.chosen[rows[better]] = xs[better]

    def keep_last(self, rows: torch.Tensor, xs: torch.Tensor, ok: torch.Tensor) -> None:
        """Keep the last successful iterate, or the last one while none has succeeded (no
        map loss)."""
        take = ok | ~self.found[rows]
        self.chosen[rows[take]] = xs[take]
        self.found[rows] |= ok


@dataclass
class Trajectory:
    """What one descent leaves: the selected iterates and the cost."""

    x: torch.Tensor  # float N×3×H×W on the uint8 lattice
    found: torch.Tensor  # bool (N,): a successful iterate was selected
    distance: torch.Tensor  # (N,) interpretation distance of the selected iterate (inf if none)
    passes: torch.Tensor  # (N,) passes spent
    #: bool (N,): with a map loss, a successful iterate beat the start (the first judged one)
    improved: torch.Tensor | None = None
