"""Where a perturbation may live: per-image supports S ∈ [0,1]^{N×1×H×W}.

A support multiplies every update of every stage (warm start, joint stage, random start) and
bounds the projection: |δ| ≤ ε·S per pixel on the uint8 lattice, so δ = 0 where S = 0 and
‖δ‖∞ ≤ ε everywhere. Built in, by the names ``--support`` takes:

- ``full``: no restriction (None);
- ``edges[:τ]``: AdvEdge's edge support (Abdukhamidov et al. 2021): the Sobel magnitude of the
  clean image's mean over RGB (scikit-image's ``filters.sobel``: 3×3 kernels over 4, magnitude
  √((g_h² + g_v²)/2), reflected borders), above τ (default 0.1, the AdvEdge+ notebooks'),
  dilated by ``dilation`` pixels (default 1);
- ``target-map[:q[:σ]]``: the top-q fraction (default 0.5) of the target map's cells, upsampled
  (nearest) to the image and, with σ > 0, blurred (Gaussian, σ pixels: a soft support that
  fades out across the region's border);
- a file or folder: a mask image (white = free), one for every input, or per input the mask at
  the input's relative name in that folder; resized and cropped as the inputs are.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adv2.filters import blur
from adv2.metrics import top_mask

#: the names of the built-in supports
KINDS = ("full", "edges", "target-map")


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W Sobel magnitude of the mean over channels of x (N×3×H×W in [0,1]), as
    ``skimage.filters.sobel``: √((g_h² + g_v²)/2) with kernels [1,2,1]ᵀ[1,0,−1]/4."""
    gray = x.mean(dim=1, keepdim=True)
    padded = F.pad(gray, (1, 1, 1, 1), mode="reflect")
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4
    diff = torch.tensor([1.0, 0.0, -1.0], device=x.device, dtype=x.dtype)
    kh = (diff[:, None] * smooth[None, :]).view(1, 1, 3, 3)  # horizontal edges
    kv = (smooth[:, None] * diff[None, :]).view(1, 1, 3, 3)  # vertical edges
    gh, gv = F.conv2d(padded, kh), F.conv2d(padded, kv)
    return ((gh.square() + gv.square()) / 2).sqrt()


def edges(x: torch.Tensor, threshold: float = 0.1, dilation: int = 1) -> torch.Tensor:
    """AdvEdge's hard edge support (N×1×H×W in {0,1}) of clean images x (N×3×H×W)."""
    mask = (sobel_magnitude(x) > threshold).to(x.dtype)
    if dilation > 0:
        mask = F.max_pool2d(mask, 2 * dilation + 1, stride=1, padding=dilation)
    return mask


def target_map(maps: torch.Tensor, size: tuple[int, int], q: float = 0.5,
               sigma: float = 0.0) -> torch.Tensor:
    """The top-``q`` cells of each target map (N×1×h×w), upsampled (nearest) to ``size`` and
    blurred with a Gaussian of ``sigma`` pixels (0: a hard support)."""
    top = top_mask(maps, q).view_as(maps).to(maps.dtype)
    return blur(F.interpolate(top, size=size, mode="nearest"), sigma).clamp(0, 1)


def from_file(path: Path, names: list[str], size: tuple[int, int],
              device: torch.device) -> torch.Tensor:
    """Masks from a file (one for every image) or a folder (``<folder>/<name>``, else the
    name's stem with any image suffix), resized to ``size``, as N×1×H×W in [0,1]."""
    from adv2.data import IMAGE_SUFFIXES, load_image

    def mask_of(name: str) -> np.ndarray:
        if path.is_file():
            found = path
        else:
            found = path / name
            if not found.is_file():
                stem = Path(name).with_suffix("")
                found = next((path / stem.with_suffix(s) for s in sorted(IMAGE_SUFFIXES)
                              if (path / stem.with_suffix(s)).is_file()), found)
            if not found.is_file():
                raise ValueError(f"support folder {path} has no mask for {name}")
        image = load_image(found, size[0])  # resized and cropped as the inputs are
        return image.astype(np.float32).mean(axis=2) / 255

    masks = np.stack([mask_of(n) for n in names])[:, None]
    return torch.from_numpy(masks).to(device)


def parse(text: str) -> tuple[str, tuple[float, ...]]:
    """``full``, ``edges[:τ]``, ``target-map[:q[:σ]]`` or a path → (kind or ``file``, the
    numbers after the colons); ValueError with the problem."""
    kind, _, rest = text.partition(":")
    if kind in KINDS:
        params = rest.split(":") if rest else []
        if len(params) > {"full": 0, "edges": 1, "target-map": 2}[kind]:
            raise ValueError(f"{text!r}: too many parameters for '{kind}'")
        try:
            values = tuple(float(p) for p in params)
        except ValueError:
            raise ValueError(f"{text!r}: the parameters after ':' must be numbers") from None
        if not all(map(math.isfinite, values)):
            raise ValueError(f"{text!r}: the parameters must be finite")
        if values and not (0 <= values[0] <= 1 and (kind != "target-map" or values[0] > 0)):
            raise ValueError(f"{text!r}: the parameter must be in (0, 1]")
        if len(values) == 2 and values[1] < 0:
            raise ValueError(f"{text!r}: the blur σ must be ≥ 0")
        return kind, values
    if not Path(text).exists():
        raise ValueError(f"{text!r} is neither {', '.join(KINDS)} nor an existing mask file or "
                         "folder")
    return "file", ()


def build(text: str, x: torch.Tensor, target_maps: torch.Tensor,
          names: list[str]) -> torch.Tensor | None:
    """The support ``text`` (see :func:`parse`) for clean images x (N×3×H×W), their target
    maps and their names; None for ``full``."""
    kind, params = parse(text)
    if kind == "full":
        return None
    if kind == "edges":
        return edges(x, *params)
    if kind == "target-map":
        return target_map(target_maps, x.shape[-2:], *params)
    return from_file(Path(text), names, x.shape[-2:], x.device)


def lattice_bound(eps: float, support: torch.Tensor | None) -> float | torch.Tensor:
    """The per-pixel L∞ bound on the uint8 lattice: ⌊255·ε·S⌋/255 (ε alone without
    support); a ValueError for a support that is not finite or leaves [0, 1] (it would widen the ball)."""
    if support is None:
        return math.floor(eps * 255 + 1e-6) / 255
    if not (support.isfinite().all() and (support >= 0).all() and (support <= 1).all()):
        raise ValueError("a support takes values in [0, 1] (the fraction of ε each pixel may "
                         "move)")
    return torch.floor(eps * support * 255 + 1e-6) / 255
