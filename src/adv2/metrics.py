"""Batched metrics; every function returns one value per sample (a tensor of shape (N,)).

Maps are N×1×h×w (or N×h×w) in [0,1], compared at their native resolution.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import rankdata

DEFAULT_KS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the target class."""
    return logits.softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


def margin(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """z_c − max_{j≠c} z_j per sample, (N,), for logits N×C and classes (N,)."""
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, classes.view(-1, 1), float("-inf")).amax(dim=1)
    return own - others


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per sample."""
    return (a - b).abs().flatten(1).mean(dim=1)


def top_mask(maps: torch.Tensor, k: float) -> torch.Tensor:
    """Boolean mask of the top ⌈k·P⌉ pixels of each map (P pixels); ties go to the lower
    index."""
    flat = maps.flatten(1)
    count = max(1, math.ceil(k * flat.shape[1] - 1e-9))
    idx = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :count]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)


def iou(a: torch.Tensor, b: torch.Tensor, ks: tuple[float, ...] = DEFAULT_KS) -> torch.Tensor:
    """IoU of the top-k% pixel sets of a and b, per sample (rows) and k (columns): N×len(ks).

    The paper's IoU test; its mean over ks is what reports call ``iou``.
    """
    cols = []
    for k in ks:
        ma, mb = top_mask(a, k), top_mask(b, k)
        inter = (ma & mb).sum(dim=1).float()
        union = (ma | mb).sum(dim=1).float()
        cols.append(inter / union)
    return torch.stack(cols, dim=1)


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: float = 0.1) -> torch.Tensor:
    """|top_k(a) ∩ top_k(b)| / |top_k| (Ghorbani et al.), per sample."""
    ma, mb = top_mask(a, k), top_mask(b, k)
    return (ma & mb).sum(dim=1).float() / ma.sum(dim=1).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample (Pearson correlation of average ranks)."""
    ra = torch.from_numpy(rankdata(a.detach().flatten(1).cpu().double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().flatten(1).cpu().double().numpy(), axis=1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)
    return ((ra * rb).sum(dim=1) / denom).float()
