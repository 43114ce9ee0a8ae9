"""GRAD and CAM on the tiny model: shapes, ranges, values, gradients; SmoothReLU (IG,
SmoothGrad and Grad-CAM: shapes and ranges here, the rest in test_new_interpreters.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adv2.interpreters import CAM, GRAD, SmoothReLU, build_interpreter, minmax
from adv2.interpreters.smooth_copy import smooth_copy
from adv2.models import Classifier, ModelError



# ------------------------------------------------------------------------------------ minmax


def test_minmax_constant_map_gives_zeros_without_nan() -> None:
    maps = torch.full((3, 1, 4, 4), 0.7)
    maps[1] = 0.0
    maps[2] = -5.0
    out = minmax(maps)
    assert out.shape == maps.shape
    assert not torch.isnan(out).any()
    assert (out == 0).all()


def test_minmax_is_per_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 1, 5, 5, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 100.0]).view(
        4, 1, 1, 1)
    out = minmax(maps)
    flat = out.flatten(1)
    torch.testing.assert_close(flat.amin(dim=1), torch.zeros(4))
    torch.testing.assert_close(flat.amax(dim=1), torch.ones(4))
    # affine map of each row: the order of cells is kept
    assert torch.equal(flat.argsort(dim=1), maps.flatten(1).argsort(dim=1))
    torch.testing.assert_close(minmax(maps[2:3]), out[2:3])


# ------------------------------------------------------------------------------ shapes/range


#: every interpreter that needs no trained checkpoint and no inner optimisation
KINDS = ["cam", "grad", "ig", "smoothgrad", "gradcam"]


@pytest.mark.parametrize("kind", KINDS)
def test_map_shape_and_range(kind, tiny_model, x, classes) -> None:
    interp = build_interpreter(kind, tiny_model)
    maps = interp(x, classes)
    h, w = interp.resolution(32, 32)
    assert maps.shape == (len(x), 1, h, w)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    flat = maps.flatten(1)
    # normalised per image: each non-constant map spans [0, 1]
    torch.testing.assert_close(flat.amax(dim=1), torch.ones(len(x)), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.amin(dim=1), torch.zeros(len(x)))


def test_resolution(tiny_model) -> None:
    cam, grad = CAM(tiny_model), GRAD(tiny_model)
    assert tuple(cam.resolution(32, 32)) == (8, 8)  # two stride-2 convolutions
    assert tuple(cam.resolution(64, 48)) == (16, 12)
    assert cam(torch.rand(2, 3, 64, 48), torch.tensor([0, 1])).shape == (2, 1, 16, 12)
    assert grad.resolution(32, 32) == (8, 8)  # pool 4
    assert GRAD(tiny_model, pool=2).resolution(32, 64) == (16, 32)
    assert GRAD(tiny_model, pool=2)(torch.rand(1, 3, 32, 64), torch.tensor([3])).shape == (
        1, 1, 16, 32)


def test_cam_values_match_definition(tiny_model, x, classes) -> None:
    logits, maps = CAM(tiny_model).explain(x, classes)
    torch.testing.assert_close(logits, tiny_model(x))
    feats = tiny_model.features(x)
    w = tiny_model.linear.weight[classes]
    raw = (w[:, :, None, None] * feats).sum(dim=1, keepdim=True)
    lo = raw.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = raw.flatten(1).amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(maps, (raw - lo) / (hi - lo), atol=1e-5, rtol=1e-4)
    # the map depends on the class
    other = (classes + 1) % 10
    assert not torch.allclose(CAM(tiny_model)(x, other), maps)


def test_grad_values_match_definition(tiny_model, x, classes) -> None:
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(tiny_model(xg), classes, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    sal = F.avg_pool2d(g.abs().amax(dim=1, keepdim=True), 4)
    expected = minmax(sal)
    logits, maps = GRAD(tiny_model).explain(x, classes)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(logits, tiny_model(x))


@pytest.mark.parametrize("kind", KINDS)
def test_map_of_one_image_does_not_depend_on_the_batch(kind, tiny_model, x, classes) -> None:
    interp = build_interpreter(kind, tiny_model)
    together = interp(x, classes)
    for i in (0, 3):
        alone = interp(x[i:i + 1], classes[i:i + 1])
        torch.testing.assert_close(alone, together[i:i + 1], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------- gradients


def test_cam_map_loss_gradient_is_nonzero_and_finite(tiny_model, x, classes) -> None:
    target = torch.rand(len(x), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_(True)
    maps = CAM(tiny_model)(xg, classes)
    loss = (maps - target).pow(2).mean()
    (g,) = torch.autograd.grad(loss, xg)
    assert torch.isfinite(g).all()
    # every image gets its own non-zero gradient
    assert (g.flatten(1).abs().sum(dim=1) > 0).all()


def test_grad_attack_forward_value_is_true_map_and_gradient_flows(tiny_model, x, classes) -> None:
    interp = GRAD(tiny_model)
    true_logits, true_maps = interp.explain(x, classes)
    # a target that differs from the current map
    target = 1.0 - true_maps.detach()
    for progress in (0.0, 0.5, 1.0):
        xg = x.clone().requires_grad_(True)
        logits, maps = interp.attack_forward(xg, classes, progress)
        # values are those of the true model and the true interpreter
        assert torch.equal(maps.detach(), true_maps.detach())
        torch.testing.assert_close(logits.detach(), true_logits.detach())
        loss = (maps - target).pow(2).flatten(1).mean(dim=1).sum()
        (g,) = torch.autograd.grad(loss, xg)
        assert torch.isfinite(g).all()
        assert (g.flatten(1).abs().sum(dim=1) > 0).all()


def test_grad_beta_schedule_is_geometric_and_applied(tiny_model, x, classes) -> None:
    interp = GRAD(tiny_model, beta_start=10.0, beta_end=1000.0, fast=False)
    assert interp.beta(0.0) == pytest.approx(10.0)
    assert interp.beta(0.5) == pytest.approx(100.0)
    assert interp.beta(1.0) == pytest.approx(1000.0)
    assert interp.beta(-1.0) == pytest.approx(10.0) and interp.beta(2.0) == pytest.approx(1000.0)
    interp.attack_forward(x[:1].clone().requires_grad_(True), classes[:1], 0.5)
    units = [m for m in interp.surrogate.modules() if isinstance(m, SmoothReLU)]
    assert len(units) == 2
    assert all(u.beta == pytest.approx(100.0) for u in units)
    assert units[0].cap is None and units[1].cap == 6.0  # ReLU, ReLU6


def test_smooth_copy_leaves_the_model_untouched(tiny_model) -> None:
    twin = smooth_copy(tiny_model, lambda m: SmoothReLU(5.0, 6.0 if isinstance(m, nn.ReLU6)
                                                         else None))
    kinds = [type(m) for m in tiny_model.body]
    assert nn.ReLU in kinds and nn.ReLU6 in kinds and SmoothReLU not in kinds
    assert [type(m) for m in twin.body].count(SmoothReLU) == 2
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(twin(x), tiny_model(x))  # forward values are exact


# -------------------------------------------------------------------------------- SmoothReLU


@pytest.mark.parametrize("cap", [None, 6.0])
def test_smooth_relu_forward_is_exact(cap) -> None:
    z = torch.linspace(-10, 10, 2001)
    out = SmoothReLU(beta=3.0, cap=cap)(z)
    expected = F.relu(z) if cap is None else F.relu6(z)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cap", [None, 6.0])
def test_smooth_relu_derivative_tends_to_step(cap) -> None:
    z = torch.tensor([-3.0, -1.0, -0.3, 0.3, 1.0, 3.0, 5.0, 5.7, 6.3, 8.0])
    step = ((z > 0) & ((z < cap) if cap is not None else True)).float()
    errors = []
    for beta in (1.0, 10.0, 100.0):
        zg = z.clone().requires_grad_(True)
        (d,) = torch.autograd.grad(SmoothReLU(beta, cap)(zg).sum(), zg)
        expected = torch.sigmoid(beta * z)
        if cap is not None:
            expected = expected - torch.sigmoid(beta * (z - cap))
        torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-4)
        errors.append(float((d - step).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


def test_smooth_relu_double_backprop_is_nonzero() -> None:
    z = torch.tensor([-0.2, 0.0, 0.1, 5.9], requires_grad=True)
    beta = 10.0
    (d,) = torch.autograd.grad(SmoothReLU(beta, 6.0)(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d.sum(), z)
    s = torch.sigmoid(beta * z.detach())
    s6 = torch.sigmoid(beta * (z.detach() - 6.0))
    expected = beta * s * (1 - s) - beta * s6 * (1 - s6)
    torch.testing.assert_close(d2, expected, atol=1e-5, rtol=1e-4)
    assert (d2.abs() > 1e-3).all()


# --------------------------------------------------------------------------------- errors


def test_cam_on_model_without_head_raises_model_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10))
    model = Classifier(net, name="headless")
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 10)  # still classifies
    with pytest.raises(ModelError, match=r"'headless'.*CAM"):
        CAM(model)
    with pytest.raises(ModelError, match="CAM"):
        build_interpreter("cam", model)
    # a head without a declared linear layer is not enough either
    feats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    no_linear = Classifier(feats, head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                     nn.Linear(4, 10)), name="nolinear")
    with pytest.raises(ModelError, match="'nolinear'"):
        CAM(no_linear)
    # GRAD needs no head
    assert GRAD(model)(torch.rand(1, 3, 16, 16), torch.tensor([2])).shape == (1, 1, 4, 4)


def test_build_interpreter_rejects_unknown_names(tiny_model) -> None:
    with pytest.raises(ValueError, match="unknown interpreter 'lime'"):
        build_interpreter("lime", tiny_model)
