"""Feature squeezers (Xu et al., NDSS 2018) as torch modules usable inside attacks.

Every squeezer maps float N×3×H×W images in [0,1] to squeezed images of the same shape,
re-quantised to the uint8 lattice (values k/255), as the detector predicts on uint8 images.
Rounding is straight-through (identity gradient); the median is differentiable through the
selected element; non-local means (OpenCV, not differentiable) has an identity backward (BPDA).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adv2.data import quantise, to_tensor, to_uint8


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The value of ``y`` with the gradient of ``x`` (identity backward)."""
    return x + (y - x).detach()


class Squeezer(nn.Module):
    """Base class: ``forward(x)`` with x float N×3×H×W in [0,1] → same shape on the uint8
    lattice. ``name`` identifies the squeezer and its setting (e.g. ``bit-3``)."""

    name: str = "squeezer"

    def extra_repr(self) -> str:
        return self.name


class BitDepth(Squeezer):
    """Reduce each colour channel to ``bits`` bits: round(x·(2^b − 1)) / (2^b − 1)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bit depth must be in 1..8, got {bits}")
        self.bits = bits
        self.name = f"bit-{bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        squeezed = quantise(torch.round(x.clamp(0, 1) * levels) / levels)
        return straight_through(x, squeezed)


class MedianSmoothing(Squeezer):
    """Per-channel median over a ``size``×``size`` window, like
    ``scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")``.

    The window of pixel i spans offsets −(size//2) … size−1−size//2 (scipy's origin 0), edges
    are padded by symmetric reflection (scipy's ``reflect``), and for an even window the upper
    of the two middle values is taken (scipy's rank size²//2). The output is the selected input
    element, so the gradient flows to it alone.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"median window must be at least 2, got {size}")
        self.size = size
        self.name = f"median-{size}x{size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        before, after = k // 2, k - 1 - k // 2
        n, c, h, w = x.shape
        rows = _reflect_index(h, before, after, x.device)
        cols = _reflect_index(w, before, after, x.device)
        padded = x[:, :, rows][:, :, :, cols]
        patches = F.unfold(padded, k).view(n, c, k * k, h, w)
        return patches.kthvalue(k * k // 2 + 1, dim=2).values


def _reflect_index(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a 1-d axis padded by ``before``/``after`` with scipy's ``reflect`` mode
    (d c b a | a b c d | d c b a)."""
    idx = torch.arange(-before, length + after, device=device)
    period = 2 * length
    idx = idx % period
    return torch.where(idx >= length, period - 1 - idx, idx)


def nlm_uint8(images: np.ndarray, search: int, patch: int, strength: float) -> np.ndarray:
    """``cv2.fastNlMeansDenoisingColored`` on each uint8 N×H×W×3 image (search window,
    patch size, filter strength h used for luminance and colour); returns uint8 N×H×W×3."""
    return np.stack([cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(img), None, strength,
                                                     strength, patch, search)
                     for img in images])


class NonLocalMeans(Squeezer):
    """OpenCV's non-local means denoising on the uint8 image (search window, patch, h), e.g.
    11-3-4; the backward pass is the identity (BPDA)."""

    def __init__(self, search: int, patch: int, strength: float) -> None:
        super().__init__()
        self.search, self.patch, self.strength = search, patch, strength
        self.name = f"nlm-{search}-{patch}-{strength:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        denoised = nlm_uint8(to_uint8(x), self.search, self.patch, self.strength)
        return straight_through(x, to_tensor(denoised).to(x))


#: every squeezer setting of the paper's detector grid
SQUEEZER_NAMES = ("bit-1", "bit-2", "bit-3", "bit-4", "bit-5", "median-2x2", "median-3x3",
                  "nlm-11-3-2", "nlm-11-3-4", "nlm-13-3-2", "nlm-13-3-4")


def build_squeezer(name: str) -> Squeezer:
    """``bit-<b>`` (1–8), ``median-<k>x<k>`` or ``nlm-<search>-<patch>-<h>`` → a squeezer."""
    kind, _, setting = name.partition("-")
    try:
        if kind == "bit":
            return BitDepth(int(setting))
        if kind == "median":
            k, _, k2 = setting.partition("x")
            if k != k2:
                raise ValueError("median windows are square")
            return MedianSmoothing(int(k))
        if kind == "nlm":
            search, patch, strength = setting.split("-")
            return NonLocalMeans(int(search), int(patch), float(strength))
    except ValueError as exc:
        raise ValueError(f"bad squeezer {name!r}: {exc}") from exc
    raise ValueError(f"unknown squeezer {name!r}; use bit-<b>, median-<k>x<k> or "
                     "nlm-<search>-<patch>-<h>")
