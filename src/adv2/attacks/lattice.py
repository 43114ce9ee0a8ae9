"""The uint8 lattice and the L∞ ball: where every attack iterate lives."""

from __future__ import annotations

import torch

from adv2.data import quantise

__all__ = ["project", "quantise"]


def project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto {‖x − x0‖∞ ≤ eps} ∩ [0,1]^d."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
