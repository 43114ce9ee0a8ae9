"""Metric values on hand-made maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from adv2 import metrics
from adv2.attacks import TargetPredicted


def _map(values) -> torch.Tensor:
    """A 1×1×2×5 map from 10 row-major values."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 5)


def _ranked(order) -> torch.Tensor:
    """A 1×1×2×5 map whose pixels, from highest to lowest value, are ``order`` (flat indices)."""
    flat = torch.zeros(10)
    for rank, idx in enumerate(order):
        flat[idx] = 10.0 - rank
    return flat.view(1, 1, 2, 5)


# top sets: A = 0,1,2,3,4,...   B = 1,2,3,4,0,...   C (reversed A) = 9,8,7,...
A = _ranked([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
B = _ranked([1, 2, 3, 4, 0, 5, 6, 7, 8, 9])
C = _ranked([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])


def test_l1_known_values() -> None:
    a = torch.zeros(2, 1, 2, 5)
    b = torch.zeros(2, 1, 2, 5)
    b[0, 0, 0, 0] = 1.0  # one cell off by 1 → 1/10
    b[1] = 0.5  # every cell off by 0.5
    b[1, 0, 1, 4] = -0.5  # |−0.5| counts as 0.5
    out = metrics.l1(a, b)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([0.1, 0.5]))
    torch.testing.assert_close(metrics.l1(b, a), out)  # symmetric
    # N×h×w maps work too
    torch.testing.assert_close(metrics.l1(a[:, 0], b[:, 0]), out)


def test_iou_known_overlaps() -> None:
    a = torch.cat([A, A, A])
    b = torch.cat([B, A, C])
    out = metrics.iou(a, b, ks=(0.2, 0.4, 0.5))
    assert out.shape == (3, 3)
    expected = torch.tensor([
        # k=0.2: {0,1} vs {1,2} → 1/3; k=0.4: {0..3} vs {1..4} → 3/5; k=0.5: {0..4} vs {1..4,0}
        [1 / 3, 3 / 5, 1.0],
        [1.0, 1.0, 1.0],  # identical maps
        [0.0, 0.0, 0.0],  # reversed: top halves are disjoint
    ])
    torch.testing.assert_close(out, expected)


def test_iou_default_ks_and_symmetry() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 1, 7, 7, generator=gen), torch.rand(4, 1, 7, 7, generator=gen)
    out = metrics.iou(a, b)
    assert out.shape == (4, len(metrics.DEFAULT_KS))
    assert ((out >= 0) & (out <= 1)).all()
    torch.testing.assert_close(metrics.iou(b, a), out)
    torch.testing.assert_close(metrics.iou(a, a), torch.ones(4, len(metrics.DEFAULT_KS)))


def test_iou_is_invariant_to_monotone_transforms() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 1, 6, 6, generator=gen), torch.rand(3, 1, 6, 6, generator=gen)
    torch.testing.assert_close(metrics.iou(a, b), metrics.iou(a.pow(3) * 5 + 2, b.sqrt()))


def test_topk_intersection_known_values() -> None:
    a = torch.cat([A, A, A])
    b = torch.cat([B, A, C])
    torch.testing.assert_close(metrics.topk_intersection(a, b, k=0.2),
                               torch.tensor([0.5, 1.0, 0.0]))
    # k = 0.4: {0,1,2,3} vs {1,2,3,4} → 3/4
    torch.testing.assert_close(metrics.topk_intersection(A, B, k=0.4), torch.tensor([0.75]))


def test_top_mask_selects_the_largest_values() -> None:
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(5, 1, 4, 5, generator=gen)
    for k in (0.1, 0.2, 0.5):
        mask = metrics.top_mask(maps, k)
        count = round(k * 20)
        assert mask.shape == (5, 20) and mask.dtype == torch.bool
        assert (mask.sum(dim=1) == count).all()
        flat = maps.flatten(1)
        # every selected value ≥ every unselected value
        sel_min = torch.where(mask, flat, torch.inf).amin(dim=1)
        rest_max = torch.where(mask, -torch.inf, flat).amax(dim=1)
        assert (sel_min >= rest_max).all()
    # at least one pixel even for a tiny k
    assert metrics.top_mask(maps, 0.001).sum(dim=1).eq(1).all()


def test_top_mask_count_is_ceiling_as_documented() -> None:
    maps = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    assert int(metrics.top_mask(maps, 0.5).sum()) == math.ceil(0.5 * 49)


def test_top_mask_breaks_ties_by_index_as_documented() -> None:
    mask = metrics.top_mask(torch.zeros(1, 1, 7, 7), 0.2)
    assert mask[0].nonzero().flatten().tolist() == list(range(10))


def test_spearman_identical_reversed_and_monotone() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(4, 1, 8, 8, generator=gen)
    torch.testing.assert_close(metrics.spearman(a, a), torch.ones(4))
    torch.testing.assert_close(metrics.spearman(a, -a), -torch.ones(4))
    torch.testing.assert_close(metrics.spearman(A, C), torch.tensor([-1.0]))
    # ranks only: a strictly increasing transform keeps ρ = 1
    torch.testing.assert_close(metrics.spearman(a, torch.exp(5 * a)), torch.ones(4))


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties: bool) -> None:
    rng = np.random.default_rng(4)
    a = rng.random((5, 1, 6, 6))
    b = 0.5 * a + rng.random((5, 1, 6, 6))
    if ties:  # coarse values produce many ties; average ranks must match scipy's
        a, b = np.round(a * 4), np.round(b * 3)
    out = metrics.spearman(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    expected = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(5)]
    assert out.shape == (5,)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    # correlation is per sample: the first row alone gives the same value
    alone = metrics.spearman(torch.from_numpy(a[:1]).float(), torch.from_numpy(b[:1]).float())
    np.testing.assert_allclose(alone.numpy(), expected[:1], atol=1e-6)


def test_spearman_constant_map_is_finite() -> None:
    out = metrics.spearman(torch.zeros(2, 1, 3, 3), torch.rand(2, 1, 3, 3))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.zeros(2))


def test_success_and_confidence() -> None:
    """Success is the criterion's (the target wins; ties go to the lower class), confidence
    the target's softmax probability."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    x, rows = torch.zeros(3, 3, 2, 2), torch.arange(3)
    assert TargetPredicted()(x, logits, targets, rows).tolist() == [True, False, False]
    assert TargetPredicted(0.8)(x, logits, targets, rows).tolist() == [False, False, False]
    e2 = math.exp(2.0)
    e5 = math.exp(5.0)
    expected = torch.tensor([e2 / (e2 + 2), 1 / (2 + e5), math.e / (2 * math.e + 1)])
    torch.testing.assert_close(metrics.confidence(logits, targets), expected)
    # confidence is softmax: invariant to a per-row shift of the logits
    torch.testing.assert_close(metrics.confidence(logits + torch.tensor([[3.0], [-7.0], [1.0]]),
                                                  targets), expected)


def test_margin_on_hand_made_logits() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, 4.0]])
    torch.testing.assert_close(metrics.margin(logits, torch.tensor([0, 2])),
                               torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(metrics.margin(logits, torch.tensor([1, 0])),
                               torch.tensor([-2.0, -4.0]))
