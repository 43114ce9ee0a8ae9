"""The detectors' separation measures on hand-made scores: the AUROC (rank form, ties half)
and the Wilson interval of a detection rate."""

from __future__ import annotations

import math

import pytest
import torch

from adv2.detection import auroc, wilson_interval


def test_auroc_is_one_when_every_attacked_score_is_above_every_benign_one() -> None:
    assert auroc(torch.tensor([0.6, 0.9, 0.7]), torch.tensor([0.1, 0.5, 0.2, 0.3])) == 1.0
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.9])) == 0.0


def test_auroc_is_one_half_for_identical_scores() -> None:
    assert auroc(torch.full((4,), 0.3), torch.full((7,), 0.3)) == 0.5
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.5


def test_auroc_counts_pairs_and_ties_half() -> None:
    # pairs (positive, negative): 3 > 1, 3 > 2, 3 = 3, 3 < 5; 2 > 1, 2 = 2, 2 < 3, 2 < 5;
    # 4 > 1, 4 > 2, 4 > 3, 4 < 5: 6 wins and 2 ties of 12 → (6 + 1) / 12
    positive, negative = torch.tensor([3.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert auroc(positive, negative) == pytest.approx(7 / 12, abs=1e-12)
    # the complement: negatives above positives
    assert auroc(negative, positive) == pytest.approx(5 / 12, abs=1e-12)


def test_auroc_refuses_scores_that_are_not_finite_and_empty_sides() -> None:
    with pytest.raises(ValueError, match="not finite"):
        auroc(torch.tensor([0.5, math.nan]), torch.tensor([0.1]))
    with pytest.raises(ValueError, match="not finite"):
        auroc(torch.tensor([0.5]), torch.tensor([math.inf]))
    with pytest.raises(ValueError, match="both sides"):
        auroc(torch.tensor([]), torch.tensor([0.1]))


def test_wilson_interval_of_hand_computed_rates() -> None:
    # z = 1.959964: 0 of 10 → [0, z²/(n + z²)]; 5 of 10 → 0.5 ± 0.2634
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-5)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(20 / (20 + 1.959964**2), abs=1e-6)
    # a wider confidence gives a wider interval around the same rate
    narrow, wide = wilson_interval(3, 20, 0.9), wilson_interval(3, 20, 0.99)
    assert wide[0] < narrow[0] < 3 / 20 < narrow[1] < wide[1]


@pytest.mark.parametrize("k, n, confidence", [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95),
                                              (1, 10, 1.0)])
def test_wilson_interval_refuses_impossible_counts(k: int, n: int, confidence: float) -> None:
    with pytest.raises(ValueError, match="Wilson"):
        wilson_interval(k, n, confidence)
