"""Success criteria (Foolbox-style): when an iterate counts as a successful attack.

A criterion is called as ``criterion(x, logits, targets, rows)`` with uint8-lattice images x
(n×3×H×W), their logits (n×C), the target classes (n,) and ``rows`` (n,), the indices of these
images in the attacked batch (for per-image references); it returns (n,) bool. The engine keeps
and stops on it, and :func:`~adv2.attacks.result.judge` reports it, so both say the same thing.
Combine criteria with ``&``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: ``criterion(x, logits, targets, rows) -> (n,) bool``
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Composable:
    """``a & b``: both criteria hold."""

    def __and__(self, other: Criterion) -> Both:
        return Both(self, other)


@dataclass(frozen=True)
class TargetPredicted(Composable):
    """The target class wins (argmax), with softmax probability ≥ ``min_confidence``."""

    min_confidence: float = 0.0

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        probs = logits.detach().softmax(dim=1)
        ok = probs.argmax(dim=1) == targets
        if self.min_confidence > 0:
            ok &= probs.gather(1, targets.view(-1, 1)).squeeze(1) >= self.min_confidence
        return ok


@dataclass(frozen=True)
class Both(Composable):
    """``first`` and ``second`` hold (``second`` is asked about every image)."""

    first: Criterion
    second: Criterion

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.first(x, logits, targets, rows)
                    & self.second(x.detach(), logits.detach(), targets, rows))
