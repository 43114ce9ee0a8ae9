"""The real-time saliency network (Dabkowski & Gal 2017) built on a classifier's own stages.

Encoder: the classifier itself; forward hooks collect its stride-4/8/16 stage outputs and its
last feature map in the same pass that computes the logits, and nothing is detached, so the mask
is differentiable with respect to the input (the original detached the encoder).
Selector: the classifier's own class weights. ``act = ⟨w_y, s⟩`` at each cell of the last feature
map s (the class activation map of class y) gates s by ``sigmoid(scale·act + shift)``; so the
selector needs no training of its own, only the two scalars.
Decoder: U-Net style upsamplers (pixel shuffle ×2, a skip from the encoder stage at that stride,
a residual bottleneck block) down to stride 4; head: a 1×1 conv to two channels (a, b), mask
``sigmoid(a − b + g)`` (the two-channel softmax) at 1/4 of the input resolution (56×56 for
224²), where g is the selector's gate logit upsampled. The head starts at zero, so an untrained
network returns the gate (a thresholded class activation map) and training learns the
correction; without that skip, short CPU trainings collapse to empty or full masks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from adv2.models import Classifier, ModelError, TimmFeatures

#: strides of the encoder stages the decoder takes skips from, and of the mask
SKIP_STRIDES = (16, 8, 4)
MASK_STRIDE = 4


def _candidates(model: Classifier) -> list[nn.Module]:
    """Modules of the classifier's feature extractor whose outputs may serve as stage outputs."""
    body = model.body
    inner = body.inner if isinstance(body, TimmFeatures) else body
    info = getattr(inner, "feature_info", None)
    if info is not None:
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
        return [inner.get_submodule(d["module"]) for d in dicts]
    if isinstance(inner, nn.Sequential):
        return list(inner.children())
    raise ModelError(f"model {model.name!r}: RTS needs a timm network or an nn.Sequential body "
                     "to find its stage outputs")


def find_stages(model: Classifier, size: int = 64
                ) -> tuple[dict[int, tuple[nn.Module, int]], int, int]:
    """The last candidate module at each stride of :data:`SKIP_STRIDES` (those present) with
    its output channels, the stride of the last feature map and its channel count, from one
    dummy pass at ``size``²."""
    found: dict[int, tuple[nn.Module, int]] = {}
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o)))
             for m in _candidates(model)]
    try:
        with torch.no_grad():
            last = model.features(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for h in hooks:
            h.remove()
    final_stride = size // last.shape[-1]
    for module, out in outputs:
        stride = size // out.shape[-1]
        if stride in SKIP_STRIDES and stride < final_stride:
            found[stride] = (module, out.shape[1])
    if final_stride < MASK_STRIDE:
        raise ModelError(f"model {model.name!r}: its last feature map has stride {final_stride}; "
                         f"RTS needs at least {MASK_STRIDE}")
    return found, final_stride, last.shape[1]


class Bottleneck(nn.Module):
    """Residual bottleneck block: 1×1 → 3×3 → 1×1 convolutions with batch norm, 1×1 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Upsampler(nn.Module):
    """×2 pixel-shuffle upsampling, concatenation with a projected encoder skip (optional) and a
    bottleneck block."""

    def __init__(self, cin: int, skip: int | None, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(cin, 4 * cout, 1), nn.PixelShuffle(2))
        self.skip = nn.Conv2d(skip, cout, 1) if skip else None
        self.block = Bottleneck(2 * cout if skip else cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if self.skip is not None:
            x = torch.cat([x, self.skip(skip)], dim=1)
        return self.block(x)


class SaliencyNet(nn.Module):
    """Selector, decoder and mask head on top of ``model`` (which is not a submodule: only the
    decoder's parameters and the selector's two scalars are saved and trained).

    ``forward(x, classes)``: x N×3×H×W in [0,1], classes (N,) → (logits N×C of the classifier,
    masks N×1×H/4×W/4 in [0,1], high = the region that explains the class).
    """

    def __init__(self, model: Classifier, width: int = 64, scale: float = 0.5,
                 shift: float = -5.0) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not registered: never trained nor saved
        # C×K, raises without a pool + linear head; derived from the model, so never saved
        self.register_buffer("class_weights", model.cam_weights().detach(), persistent=False)
        stages, final_stride, channels = find_stages(model)
        self.stages = {stride: module for stride, (module, _) in stages.items()}
        #: provenance of a loaded checkpoint (see adv2.rts.training.load)
        self.meta: dict = {}
        self.scale = nn.Parameter(torch.tensor(float(scale), device=model.device))
        self.shift = nn.Parameter(torch.tensor(float(shift), device=model.device))
        self.bottom = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU())
        self.skip_strides: list[int] = []
        ups = []
        stride = final_stride
        while stride > MASK_STRIDE:
            stride //= 2
            ups.append(Upsampler(width, stages[stride][1] if stride in stages else None, width))
            self.skip_strides.append(stride)
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(width, 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.to(model.device)  # the decoder computes where the classifier does

    @contextmanager
    def _taps(self) -> Iterator[dict[int, torch.Tensor]]:
        taps: dict[int, torch.Tensor] = {}

        def keep(stride: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
            return lambda module, inputs, output: taps.__setitem__(stride, output)

        hooks = [m.register_forward_hook(keep(s)) for s, m in self.stages.items()]
        try:
            yield taps
        finally:
            for h in hooks:
                h.remove()

    def gate_logit(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Selector: N×1×h×w logit of the gate, from the class activation map of ``classes``."""
        act = torch.einsum("nk,nkhw->nhw", self.class_weights[classes].to(feats), feats)
        return (self.scale * act + self.shift).unsqueeze(1)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = self.mask_logits(x, classes)
        return logits, torch.sigmoid(z)

    def mask_logits(self, x: torch.Tensor, classes: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits N×C and the mask's logits N×1×H/4×W/4 (mask = sigmoid)."""
        with self._taps() as taps:
            logits, feats = self.model.forward_with_features(x)
        gate = self.gate_logit(feats, classes)
        h = self.bottom(feats * torch.sigmoid(gate))
        for up, stride in zip(self.ups, self.skip_strides):
            h = up(h, taps.get(stride))
        ab = self.head(h)
        prior = F.interpolate(gate, size=ab.shape[-2:], mode="bilinear", align_corners=False)
        return logits, ab[:, :1] - ab[:, 1:] + prior
