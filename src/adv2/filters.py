"""Image filters shared by the interpreters and the RTS trainer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W, kernel 2·⌈3σ⌉ + 1 taps, reflect padding."""
    if sigma <= 0:
        return x
    radius = min(math.ceil(3 * sigma), min(x.shape[-2:]) // 2 - 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-taps.square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.view(n, c, h, w)
