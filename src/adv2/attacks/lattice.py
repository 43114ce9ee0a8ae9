"""The uint8 lattice and the L∞ ball: where every attack iterate lives."""

from __future__ import annotations

import torch


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round [0,1] images to the nearest uint8 level (values stay float in [0,1])."""
    return (x.clamp(0, 1) * 255).round() / 255


def project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto {‖x − x0‖∞ ≤ eps} ∩ [0,1]^d."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
