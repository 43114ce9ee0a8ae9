"""How well a detector separates attacked inputs from benign ones: the area under its ROC curve
(:func:`auroc`) and the confidence interval of a detection rate (:func:`wilson_interval`)."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The area under the ROC curve of scores where higher means "attacked": the probability
    that a positive (attacked) input scores above a negative (benign) one, ties counted half
    (the Mann–Whitney U over n·m, from average ranks).

    Arguments:
        positive: the attacked inputs' scores; negative: the benign inputs' scores (any shape,
        flattened; on any one device). A score that is not finite, or an empty side, is a
        ValueError.

    Returns:
        A number in [0, 1]: 1 when every positive scores above every negative, 0.5 when the
        scores do not separate them.

    Examples:
        >>> auroc(torch.tensor([0.9, 0.4]), torch.tensor([0.1, 0.4, 0.5]))
        0.75
    """
    pos, neg = positive.detach().flatten().double(), negative.detach().flatten().double()
    if not len(pos) or not len(neg):
        raise ValueError(f"AUROC needs scores on both sides, got {len(pos)} positive and "
                         f"{len(neg)} negative")
    values = torch.cat([pos, neg.to(pos.device)])
    if not torch.isfinite(values).all():
        raise ValueError("AUROC of scores that are not finite (NaN or infinity)")
    _, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based, the mean rank of a tie
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``k`` successes in ``n`` trials (a detection rate:
    k of n inputs flagged), at ``confidence``.

    Returns:
        (low, high) in [0, 1]; a ValueError unless 0 ≤ k ≤ n, n ≥ 1 and 0 < confidence < 1.

    Examples:
        >>> [round(v, 4) for v in wilson_interval(5, 10)]
        [0.2366, 0.7634]
    """
    if not (n >= 1 and 0 <= k <= n and 0 < confidence < 1):
        raise ValueError(f"a Wilson interval needs 0 ≤ k ≤ n, n ≥ 1 and a confidence in (0, 1),"
                         f" got k={k}, n={n}, confidence={confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
