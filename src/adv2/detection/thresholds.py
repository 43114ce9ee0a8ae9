"""Thresholds at a false-positive rate: fitting them on benign scores, deciding with them, and
measuring the rate they give held out.

A detector's scores are n×S, one column per score it computes; the joint score is their maximum,
and an input is *flagged* when its joint score is above the joint threshold. A threshold is set
so that a chosen fraction (the false-positive rate) of benign inputs scores above it;
:func:`fit_thresholds` fits every threshold and measures that rate by cross-validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _check_finite(scores: torch.Tensor) -> None:
    """A ValueError when a score is NaN or infinite: such a score is an error, not a value
    to fit on or decide by."""
    bad = (~torch.isfinite(scores)).sum().item()
    if bad:
        raise ValueError(f"{bad} of {scores.numel()} scores are not finite (NaN or infinite)")


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """The smallest observed score t with at most ⌊fpr·n⌋ of the n ``scores`` above it
    (the ⌈(1 − fpr)·n⌉-th smallest score); ``fpr`` in [0, 1)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"false-positive rate must be in [0, 1), got {fpr}")
    if scores.numel() == 0:
        raise ValueError("no benign scores to set a threshold from")
    _check_finite(scores)
    ordered = scores.flatten().sort().values
    k = max(math.ceil((1 - fpr) * len(ordered) - 1e-9), 1)
    return float(ordered[k - 1])


def cross_validated_flags(scores: torch.Tensor, fpr: float, folds: int = 10,
                          seed: int = 0) -> torch.Tensor:
    """n×S bool: each benign image's flags under thresholds fitted (:func:`threshold_at_fpr`,
    column by column) on the other folds of a seeded ``folds``-fold split of the n×S benign
    ``scores``. Their column means are the held-out false-positive rates of the fitting
    procedure, measured on every benign image once."""
    n = len(scores)
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 ≤ folds ≤ {n} benign images, got {folds} folds")
    fold = torch.from_numpy(np.random.default_rng(seed).permutation(n) % folds).to(scores.device)
    flags = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for k in range(folds):
        held = fold == k
        fit = scores[~held]
        thresholds = torch.tensor([threshold_at_fpr(fit[:, j], fpr) for j in range(fit.shape[1])],
                                  device=scores.device)
        flags[held] = scores[held] > thresholds
    return flags


def with_joint(scores: torch.Tensor) -> torch.Tensor:
    """n×(S+1): the n×S ``scores`` and their joint score (the maximum) as the last column, the
    columns whose held-out rates :func:`cross_validated_flags` measures."""
    return torch.cat([scores, scores.amax(dim=1, keepdim=True)], dim=1)


def held_out_folds(n: int, folds: int) -> int:
    """The folds a held-out rate over ``n`` benign images takes: ``folds``, at most one per
    image; 0 (no held-out rate) when that leaves fewer than 2."""
    folds = min(folds, n)
    return folds if folds >= 2 else 0


@dataclass
class Detection:
    """``scores`` n×S (one column per score), ``joint`` (n,) their maximum, ``flags`` n×S and
    ``joint_flag`` (n,) bool: score above the fitted threshold (``joint_flag``: flagged)."""

    scores: torch.Tensor
    joint: torch.Tensor
    flags: torch.Tensor
    joint_flag: torch.Tensor

    def rates(self) -> list[float]:
        """The fraction of inputs flagged by each column, then by the joint score (S+1)."""
        return [*self.flags.float().mean(dim=0).tolist(), float(self.joint_flag.float().mean())]


@dataclass
class Thresholds:
    """A fitted state: the (S,) thresholds of the score columns, the joint score's threshold and
    the false-positive rate they were fitted at.

    Examples:
        >>> Thresholds.fit(torch.arange(10.0)[:, None], 0.1).joint
        8.0
    """

    columns: torch.Tensor
    joint: float
    fpr: float

    @classmethod
    def fit(cls, scores: torch.Tensor, fpr: float) -> Thresholds:
        """Each column's threshold and the joint one (:func:`threshold_at_fpr`) for n×S benign
        ``scores``."""
        return cls(torch.tensor([threshold_at_fpr(scores[:, j], fpr)
                                 for j in range(scores.shape[1])], device=scores.device),
                   threshold_at_fpr(scores.amax(dim=1), fpr), float(fpr))

    def decide(self, scores: torch.Tensor) -> Detection:
        """Flags for n×S ``scores`` (a ValueError when one is not finite)."""
        _check_finite(scores)
        joint = scores.amax(dim=1)
        return Detection(scores, joint, scores > self.columns.to(scores.device),
                         joint > self.joint)


@dataclass
class ThresholdFit:
    """Thresholds fitted on n×S benign scores, and ``held_out``: n×(S+1) bool, each benign
    image's flags by each column and the joint score under thresholds fitted on the other
    folds (:func:`cross_validated_flags` of :func:`with_joint`; None without folds)."""

    thresholds: Thresholds
    held_out: torch.Tensor | None

    def held_out_fpr(self, names: list[str]) -> dict[str, float] | None:
        """The held-out false-positive rate of each score column (by its name in ``names``)
        and of the joint score (``"joint"``); None without folds."""
        if self.held_out is None:
            return None
        return dict(zip([*names, "joint"], self.held_out.float().mean(dim=0).tolist()))


def fit_thresholds(scores: torch.Tensor, fpr: float, folds: int = 10,
                   seed: int = 0) -> ThresholdFit:
    """Thresholds at ``fpr`` fitted on all n×S benign ``scores`` and their held-out flags by a
    seeded cross-validation of :func:`held_out_folds` (``folds``, at most n) folds.

    Examples:
        >>> c = fit_thresholds(torch.arange(4.0)[:, None], 0.25, folds=4)
        >>> c.thresholds.joint, c.held_out_fpr(["s"])
        (2.0, {'s': 0.25, 'joint': 0.25})
    """
    k = held_out_folds(len(scores), folds)
    held_out = cross_validated_flags(with_joint(scores), fpr, k, seed) if k else None
    return ThresholdFit(Thresholds.fit(scores, fpr), held_out)
