"""GRAD's fast surrogate: exact true maps, the generic surrogate's attack gradient, fallback."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adv2.interpreters import GRAD
from adv2.interpreters.grad_surrogate import FastSurrogate
from adv2.interpreters.surrogate_layers import DualReLU, FrozenSiLU
from adv2.models import Classifier, PoolLinear


def make_bn_model(seed: int = 0, extra: nn.Module | None = None) -> Classifier:
    """Conv-BN-ReLU6, depthwise conv-BN-ReLU, pointwise conv-BN-SiLU, a grouped strided conv,
    max pooling, a BN after the pooling and a linear head; BN statistics away from the
    identity."""
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4), nn.MaxPool2d(2, ceil_mode=True),
        nn.BatchNorm2d(16),
    ]
    if extra is not None:
        layers.append(extra)
    features = nn.Sequential(*layers)
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    linear = nn.Linear(16, 10)
    with torch.no_grad():
        linear.weight.mul_(10.0)
    return Classifier(features, PoolLinear(linear), linear, name="bn-tiny")


@pytest.fixture
def bn_model() -> Classifier:
    return make_bn_model()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 32, 32, generator=gen), torch.randint(0, 10, (5,), generator=gen)


def graph_nodes(t: torch.Tensor) -> set[str]:
    """Names of the autograd nodes t depends on."""
    seen, names, todo = set(), set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(fn for fn, _ in node.next_functions)
    return names


def attack_gradient(interp: GRAD, x: torch.Tensor, classes: torch.Tensor, target: torch.Tensor,
                    progress: float) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    logits, maps = interp.attack_forward(xg, classes, progress)
    loss = F.cross_entropy(logits, classes) + 50.0 * (maps - target).pow(2).mean()
    (g,) = torch.autograd.grad(loss, xg)
    return g


def test_fast_path_is_taken_and_replaces_the_layers(bn_model, batch) -> None:
    interp = GRAD(bn_model)
    assert interp.fast is not None and interp.surrogate is None
    kinds = [type(m) for m in interp.fast.net.modules()]
    assert kinds.count(DualReLU) == 2 and kinds.count(FrozenSiLU) == 1
    assert not any(issubclass(k, (nn.ReLU, nn.ReLU6, nn.SiLU)) for k in kinds)
    x, classes = batch
    _, _, smooth_grad = interp.fast(x.clone().requires_grad_(True), classes, beta=5.0)
    names = graph_nodes(smooth_grad)
    # the frozen Functions, not PyTorch's convolution / batch-norm nodes
    assert {"_FrozenConvBackward", "_ConvAdjointBackward", "_ConvBatchNormBackward",
            "_FrozenBatchNormBackward", "_SmoothStepBackward", "_SiLUSlopeBackward"} <= names
    assert not names & {"ConvolutionBackward0", "NativeBatchNormBackward0",
                        "ConvolutionBackwardBackward0"}


def test_fast_true_maps_and_logits_are_bitwise_those_of_explain(bn_model, batch) -> None:
    x, classes = batch
    interp = GRAD(bn_model)
    true_logits, true_maps = interp.explain(x, classes)
    for progress in (0.0, 0.5, 1.0):
        logits, maps = interp.attack_forward(x.clone().requires_grad_(True), classes, progress)
        assert torch.equal(logits.detach(), true_logits)
        assert torch.equal(maps.detach(), true_maps)


@pytest.mark.parametrize("progress", [0.0, 0.6, 1.0])
def test_fast_attack_gradient_matches_the_generic_surrogate(bn_model, batch, progress) -> None:
    x, classes = batch
    fast, generic = GRAD(bn_model), GRAD(bn_model, fast=False)
    assert generic.fast is None and generic.surrogate is not None
    target = torch.rand(len(x), 1, 8, 8, generator=torch.Generator().manual_seed(2))
    g_fast = attack_gradient(fast, x, classes, target, progress)
    g_generic = attack_gradient(generic, x, classes, target, progress)
    assert g_generic.abs().sum() > 0
    for a, b in zip(g_fast, g_generic):  # per image
        assert float((a - b).norm() / b.norm()) <= 1e-5
    # the smooth derivative matters: the true model's own double backprop gives another gradient
    xg = x.clone().requires_grad_(True)
    logits, maps = fast.explain(xg, classes)
    loss = F.cross_entropy(logits, classes) + 50.0 * (maps - target).pow(2).mean()
    (g_true,) = torch.autograd.grad(loss, xg)
    assert float((g_true - g_generic).norm() / g_generic.norm()) > 1e-2


def test_fast_surrogate_applies_the_beta_schedule(bn_model, batch) -> None:
    x, classes = batch
    interp = GRAD(bn_model, beta_start=2.0, beta_end=50.0)
    interp.attack_forward(x[:1].clone().requires_grad_(True), classes[:1], 0.5)
    assert interp.fast.mode.smooth and interp.fast.mode.beta == pytest.approx(10.0)
    # β changes the surrogate's gradient, not the true one
    _, true_a, smooth_a = interp.fast(x.clone().requires_grad_(True), classes, beta=2.0)
    _, true_b, smooth_b = interp.fast(x.clone().requires_grad_(True), classes, beta=50.0)
    assert torch.equal(true_a, true_b)
    assert not torch.allclose(smooth_a, smooth_b, rtol=1e-3, atol=0.0)


def test_unsupported_layer_falls_back_to_the_generic_surrogate(batch, caplog) -> None:
    model = make_bn_model(extra=nn.Tanh())
    with caplog.at_level(logging.WARNING, logger="adv2.interpreters.grad_surrogate"):
        interp = GRAD(model)
    assert interp.fast is None and interp.surrogate is not None
    assert "unsupported layers: body.12 (Tanh)" in caplog.text
    assert FastSurrogate.build(make_bn_model()) is not None
    x, classes = batch
    _, true_maps = interp.explain(x, classes)
    _, maps = interp.attack_forward(x.clone().requires_grad_(True), classes, 0.5)
    assert torch.equal(maps.detach(), true_maps)
    assert torch.isfinite(attack_gradient(interp, x, classes, 1 - true_maps, 0.5)).all()


@pytest.mark.slow
def test_fast_true_map_is_bitwise_explain_on_lite0() -> None:
    from adv2.models import load_model

    model = load_model()
    gen = torch.Generator().manual_seed(0)
    x, classes = torch.rand(1, 3, 224, 224, generator=gen), torch.tensor([207])
    interp = GRAD(model)
    assert interp.fast is not None  # Conv2dSame, BatchNormAct2d, ReLU6, depthwise convs
    true_logits, true_maps = interp.explain(x, classes)
    logits, maps = interp.attack_forward(x.clone().requires_grad_(True), classes, 0.5)
    assert torch.equal(logits.detach(), true_logits)
    assert torch.equal(maps.detach(), true_maps)
    assert not graph_nodes(maps) & {"ConvolutionBackward0", "NativeBatchNormBackward0"}
