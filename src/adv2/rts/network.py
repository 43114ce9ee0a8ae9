"""The real-time saliency network (Dabkowski & Gal 2017).

Encoder: a pretrained ImageNet network of its own (the paper's design; adv2's default is
EfficientNet-Lite1 for the Lite0 classifier), or the explained classifier itself (the
*shared* design, ``encoder=None``). Forward hooks collect its stride-4/8/16 stage outputs and its
last feature map s; nothing is detached, so the mask is differentiable with respect to the input
(the original detached the encoder).
Selector: class embeddings e_y. ``act = ⟨e_y, s⟩`` at each cell of s gates s by
``sigmoid(scale·act + shift)``. With an encoder of its own the embeddings are a trained
parameter, initialised from the encoder's own ImageNet class weights (its class activation map)
and trained in a first phase on whether the class is in the image (``exists_logit``); in the
shared design they are the classifier's class weights, frozen, and only the two scalars train.
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

#: the encoder ``adv2 train-rts`` uses unless told otherwise (a built-in model name)
DEFAULT_ENCODER = "efficientnet_lite1"
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
    """Selector, decoder and mask head explaining ``model`` on the stages of ``encoder``.

    Arguments:
        model: the explained classifier (the black box of the training loss).
        encoder: a pretrained classifier whose stages feed the decoder (the paper's design), or
            None for the shared design (the encoder is ``model`` and the selector its head).
            Neither network is a submodule: they are never trained nor saved.
        width: channels of the decoder.
        scale, shift: the selector's gate ``sigmoid(scale·act + shift)``, initial values.

    Shape:
        x: N×3×H×W in [0,1] on the model's device; classes: (N,) long.

    Returns:
        ``net(x, classes)``: (logits N×C of ``model``, masks N×1×H/4×W/4 in [0,1], high = the
        region that explains the class).

    Examples:
        >>> net = SaliencyNet(model, load_model("efficientnet_lite1"))  # doctest: +SKIP
    """

    def __init__(self, model: Classifier, encoder: Classifier | None = None, width: int = 64,
                 scale: float = 0.5, shift: float = -5.0) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not registered: never trained nor saved
        object.__setattr__(self, "encoder", encoder or model)
        self.shared = encoder is None
        # C×K; raises without a pool + linear head
        weights = self.encoder.cam_weights().detach()
        if self.shared:  # the classifier's own head: derived from it, so never saved
            self.register_buffer("selector", weights, persistent=False)
        else:
            self.selector = nn.Parameter(weights.clone())
        stages, final_stride, channels = find_stages(self.encoder)
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

    def selector_parameters(self) -> list[nn.Parameter]:
        """What the first training phase trains: the gate's scalars (and the embeddings)."""
        return [self.scale, self.shift] + ([] if self.shared else [self.selector])

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What the second phase trains: the decoder and head (and, in the shared design, whose
        selector has no phase of its own, the gate's scalars)."""
        own = [p for m in (self.bottom, self.ups, self.head) for p in m.parameters()]
        return own + (self.selector_parameters() if self.shared else [])

    def gate_logit(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Selector: N×1×h×w logit of the gate, from the class embeddings of ``classes``."""
        act = torch.einsum("nk,nkhw->nhw", self.selector[classes].to(feats), feats)
        return (self.scale * act + self.shift).unsqueeze(1)

    def exists_logit(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(N,) logit that the class is in the image: the gate logit's mean over the cells (the
        original's "exists" output, trained in the first phase)."""
        return self.gate_logit(feats, classes).mean(dim=(1, 2, 3))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The encoder's last feature map and its stage outputs by stride."""
        with self._taps() as taps:
            feats = self.encoder.features(x)
        return feats, taps

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = self.mask_logits(x, classes)
        return logits, torch.sigmoid(z)

    def mask_logits(self, x: torch.Tensor, classes: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits N×C and the mask's logits N×1×H/4×W/4 (mask = sigmoid)."""
        if self.shared:  # one pass gives the logits and the encoder's features
            with self._taps() as taps:
                logits, feats = self.model.forward_with_features(x)
        else:
            logits = self.model(x)
            feats, taps = self.encode(x)
        return logits, self.decode(feats, taps, classes)

    def decode(self, feats: torch.Tensor, taps: dict[int, torch.Tensor],
               classes: torch.Tensor) -> torch.Tensor:
        """Mask logits N×1×H/4×W/4 from the encoder's outputs (:meth:`encode`)."""
        gate = self.gate_logit(feats, classes)
        h = self.bottom(feats * torch.sigmoid(gate))
        for up, stride in zip(self.ups, self.skip_strides):
            h = up(h, taps.get(stride))
        ab = self.head(h)
        prior = F.interpolate(gate, size=ab.shape[-2:], mode="bilinear", align_corners=False)
        return ab[:, :1] - ab[:, 1:] + prior
