"""What an adaptive attack asks of a fitted detector: a differentiable penalty that pushes
iterates below its thresholds, and the "undetected" test its success criterion adds.

Both are the attack engine's hooks (:class:`~adv2.attacks.engine.Objective`): called as
``hook(x, logits, rows)`` with the evaluated iterates x (n×3×H×W on the uint8 lattice), their
logits f(x) (n×C) and ``rows`` (n,), their indices in the attacked batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, Sequence

import torch


class Fitted(Protocol):
    """What a guard reads of its detector (:class:`~adv2.detection.detector.Detector`): its
    name, its score columns' names and its fitted thresholds."""

    name: str
    names: Sequence[str]

    def check_fitted(self) -> torch.Tensor: ...


class Guard(ABC):
    """The hooks against one fitted ``detector``'s score ``columns`` (all by default).

    The penalty acts on inputs whose score is above ``margin`` × threshold, with weight
    ``weight``; an input is accepted (undetected) when every guarded score is ≤
    ``accept_margin`` × threshold (a little headroom against batch-size rounding). Scores are
    cached, so that :meth:`accept` after :meth:`penalty` on the same iterates, or some of them,
    costs nothing.

    Shape:
        x: n×3×H×W; logits: n×C; rows: (n,) long. :meth:`penalty` → (n,) (differentiable in x
        and logits), :meth:`accept` → (n,) bool, :meth:`scores` → n×len(columns).
    """

    def __init__(self, detector: Fitted, columns: Sequence[int] | None = None,
                 margin: float = 0.9, weight: float = 3.0, accept_margin: float = 0.98) -> None:
        self.detector = detector
        self.columns = list(range(len(detector.names)) if columns is None else columns)
        self.thresholds = detector.check_fitted()[self.columns]
        self.margin, self.weight, self.accept_margin = margin, weight, accept_margin
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @abstractmethod
    def score(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """n×len(columns) guarded scores of x (detached) with logits f(x), without gradient."""

    @abstractmethod
    def penalty(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n,) penalty, zero on inputs whose guarded scores are all ≤ margin × threshold."""

    def scores(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """:meth:`score` of x for the batch ``rows``, from the cache when the same iterates of
        the same rows were scored last."""
        x = x.detach()
        if self._cache is not None:
            cached_rows, cached_x, cached_scores = self._cache
            match = rows[:, None] == cached_rows[None, :]
            if match.any(dim=1).all():
                at = match.int().argmax(dim=1)
                if torch.equal(cached_x[at], x):
                    return cached_scores[at]
        with torch.no_grad():
            scores = self.score(x, logits.detach())
        self._cache = (rows.clone(), x.clone(), scores)
        return scores

    def active(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """n×len(columns) bool: the guarded scores above ``margin`` × threshold."""
        return self.scores(x, logits, rows) > self.margin * self.thresholds

    def accept(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n,) bool: no guarded score flags x."""
        return (self.scores(x, logits, rows) <= self.accept_margin * self.thresholds).all(dim=1)

    def config(self) -> dict[str, Any]:
        """The guard's settings, as an adaptive attack records them."""
        return {"detector": self.detector.name,
                "columns": [self.detector.names[c] for c in self.columns],
                "thresholds": self.thresholds.tolist(), "margin": self.margin,
                "weight": self.weight, "accept_margin": self.accept_margin}
