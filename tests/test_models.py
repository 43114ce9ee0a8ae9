"""Model building and weights: strict loading, file formats, torchvision, the embedded model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from adv2.data import load_dataset, to_tensor
from adv2.interpreters import CAM, GRAD, MASK
from adv2.models import (IMAGENET_NORMALIZE, Classifier, ModelError, load_model,
                         load_state_dict, load_weights, mean_std, tf_normalize)
from conftest import IMAGENET_SAMPLE, make_tiny_model, needs_shared


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
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file"):
        load_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.pth")


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


def test_timm_needs_weights_and_known_name(tmp_path) -> None:
    with pytest.raises(ModelError, match="unknown timm model"):
        load_model("timm:no_such_timm_net", weights=tmp_path / "w.pth")
    with pytest.raises(ModelError, match="needs a local weights file"):
        load_model("timm:resnet18")


# ------------------------------------------------------------------------ embedded model


@pytest.fixture(scope="module")
def lite0() -> Classifier:
    return load_model("efficientnet_lite0")


def test_efficientnet_lite0_structure(lite0) -> None:
    assert lite0.name == "efficientnet_lite0" and lite0.has_cam_head
    assert tuple(CAM(lite0).resolution(224, 224)) == (7, 7)
    with torch.no_grad():
        logits, feats = lite0.forward_with_features(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and feats.shape == (1, 1280, 7, 7)
    # the head is global average pooling + the linear classifier
    torch.testing.assert_close(logits, lite0.linear(feats.mean(dim=(2, 3))), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@needs_shared
def test_efficientnet_lite0_top1_on_imagenet_sample(lite0) -> None:
    samples, errors = load_dataset(IMAGENET_SAMPLE)
    assert not errors
    assert len(samples) >= 100 and all(s.label is not None for s in samples)
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(samples), 50):
            batch = samples[lo:lo + 50]
            x = to_tensor([s.image for s in batch]).contiguous(memory_format=torch.channels_last)
            pred = lite0(x).argmax(dim=1)
            correct += int((pred == torch.tensor([s.label for s in batch])).sum())
    top1 = correct / len(samples)
    assert top1 >= 0.85, f"top-1 {top1:.3f} on {len(samples)} images"


# ------------------------------------------------------------------------------ offload


def test_offload_refuses_unknown_and_unavailable_devices() -> None:
    with pytest.raises(ModelError, match="'nonsense'"):
        make_tiny_model().offload("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA device"):
            make_tiny_model().offload("cuda")


def _first_and_second_order(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits, features, input gradient and a second-order gradient (as GRAD needs)."""
    x = x.clone().requires_grad_(True)
    logits, feats = model.forward_with_features(x)
    (g,) = torch.autograd.grad(logits.logsumexp(1).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    return logits, feats, g, gg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_model_computes_on_the_device_and_answers_on_the_callers() -> None:
    host, offloaded = make_tiny_model(0), make_tiny_model(0).offload("cuda")
    assert next(offloaded.parameters()).is_cuda
    x = torch.rand(3, 3, 32, 32)
    expected, got = _first_and_second_order(host, x), _first_and_second_order(offloaded, x)
    for a, b in zip(expected, got):
        assert b.device.type == "cpu"
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    assert expected[-1].abs().sum() > 0
    assert torch.equal(offloaded(x).argmax(1), host(x).argmax(1))
    classes = torch.tensor([0, 1, 2])
    _, cam = CAM(offloaded).explain(x, classes)
    assert cam.device.type == "cpu"
    # MASK runs its inner optimisation on the device and answers on the CPU
    mask_host, mask_offloaded = MASK(host, iterations=20), MASK(offloaded, iterations=20)
    maps = mask_offloaded.explain(x, classes)[1]
    assert maps.device.type == "cpu"
    assert torch.allclose(maps, mask_host.explain(x, classes)[1], atol=1e-3)
    xr = x.clone().requires_grad_(True)
    mask_offloaded.start_attack(xr, classes)
    mask_offloaded.sync(torch.arange(3), maps)
    _, ahead = mask_offloaded.attack_forward(xr, classes, 0.0)
    (g,) = torch.autograd.grad(ahead.sum(), xr)
    assert ahead.device.type == g.device.type == "cpu" and g.abs().sum() > 0
