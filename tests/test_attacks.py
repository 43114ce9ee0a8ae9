"""The attack engine, PGD and ADV² on the tiny model; losses, schedules, optimisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adv2 import metrics
from adv2 import target_maps
from adv2.attacks import (ADV2, PGD, Adam, Constant, CrossEntropy, CWMargin, LabelSmoothing,
                          Linear, MapL1, MapLogitMSE, MapMSE, Objective, Piecewise, SignStep, Stop,
                          Descent, TargetPredicted, judge, parse_schedule, project, quantise)
from adv2.data import to_tensor
from adv2.interpreters import CAM, GRAD, Verification
from adv2.target_classes import choose_targets
from conftest import N_CLASSES, make_images, make_tiny_model


def _linf_uint8(adv: np.ndarray, clean: np.ndarray) -> np.ndarray:
    diff = np.abs(adv.astype(np.int32) - clean.astype(np.int32))
    return diff.reshape(len(adv), -1).max(axis=1)


def _predicted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reported success of images with these logits: the criterion's, as floats."""
    rows = torch.arange(len(logits))
    return TargetPredicted()(torch.zeros(len(logits)), logits.detach(), targets, rows).float()


@pytest.fixture
def saturated_images() -> np.ndarray:
    """Images with pure black and pure white regions, where a missing clamp would wrap around."""
    imgs = make_images(4, seed=1)
    imgs[:, :8] = 0
    imgs[:, -8:] = 255
    imgs[1] = 255
    return imgs


@pytest.fixture
def setup(tiny_model, images):
    """(model, images, labels, targets) with seeded targets ≠ predictions."""
    with torch.no_grad():
        labels = tiny_model(to_tensor(images)).argmax(dim=1)
    targets = choose_targets(labels, N_CLASSES, seed=0, fixed=None)
    return tiny_model, images, labels, targets


# ------------------------------------------------------------------------------ project/quantise


def test_quantise_properties() -> None:
    x = torch.linspace(-0.2, 1.2, 5001).view(1, 1, 1, -1)
    q = quantise(x)
    assert q.min() >= 0 and q.max() <= 1
    levels = q * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the lattice
    assert torch.equal(quantise(q), q)  # idempotent
    inside = (x >= 0) & (x <= 1)
    assert ((q - x).abs()[inside] <= 0.5 / 255 + 1e-6).all()  # nearest level
    assert (q[x < 0] == 0).all() and (q[x > 1] == 1).all()
    # monotone
    assert (q.flatten().diff() >= 0).all()


def test_project_properties() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=gen)
    x0[0] = 0.0
    x0[1] = 1.0
    eps = 8 / 255
    x = x0 + 0.2 * torch.randn(3, 3, 4, 4, generator=gen)
    p = project(x, x0, eps)
    assert ((p - x0).abs() <= eps + 1e-7).all()
    assert p.min() >= 0 and p.max() <= 1
    torch.testing.assert_close(project(p, x0, eps), p)  # idempotent
    # points inside the ball (and the box) do not move
    inner = (x0 + eps / 2 * torch.rand(3, 3, 4, 4, generator=gen).sub(0.5)).clamp(0, 1)
    torch.testing.assert_close(project(inner, x0, eps), inner)
    # projection is per coordinate: the nearest point of the box
    torch.testing.assert_close(p, torch.clamp(torch.clamp(x, x0 - eps, x0 + eps), 0, 1))


# -------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_uint8_invariants(random_start, tiny_model, saturated_images) -> None:
    imgs = saturated_images
    targets = torch.tensor([0, 3, 5, 9])
    eps = 8 / 255
    result = PGD(tiny_model, eps=eps, steps=10, random_start=random_start, seed=3)(imgs, targets)
    adv = result.adv
    assert adv.dtype == np.uint8 and adv.shape == imgs.shape
    linf = _linf_uint8(adv, imgs)
    assert (linf <= round(255 * eps)).all()
    assert (linf > 0).all()  # the attack did move every image
    assert torch.equal(result.linf.long(), torch.from_numpy(linf).long())
    # success/confidence/pred are those of the returned uint8 images
    with torch.no_grad():
        logits = tiny_model(to_tensor(adv))
    assert torch.equal(result.pred, logits.argmax(dim=1))
    assert torch.equal(result.success, _predicted(logits, targets))
    torch.testing.assert_close(result.confidence, metrics.confidence(logits, targets))
    assert torch.equal(result.passes, torch.full((4,), 11))  # 10 steps + final evaluation


def test_pgd_reaches_targets_and_stops_on_success(setup) -> None:
    model, imgs, _, targets = setup
    full = PGD(model, eps=24 / 255, steps=40)(imgs, targets)
    assert full.success.mean() == 1.0
    early = PGD(model, eps=24 / 255, steps=40, stop_on_success=True, min_confidence=0.5)(imgs,
                                                                                    targets)
    assert early.success.mean() == 1.0
    stopped = early.passes < full.passes
    assert stopped.any()
    # an image stops only once the stopping rule holds on its (returned) uint8 iterate
    assert (early.confidence[stopped] >= 0.5).all()
    assert (early.passes <= full.passes).all()


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_respects_off_lattice_eps(random_start, tiny_model, images) -> None:
    eps = 0.03  # 7.65 uint8 levels
    result = PGD(tiny_model, eps=eps, steps=20, random_start=random_start)(images,
                                                                       torch.arange(6) % 10)
    assert (_linf_uint8(result.adv, images) / 255 <= eps).all()


def test_pgd_random_start_is_seeded(tiny_model, images) -> None:
    targets = torch.tensor([1, 2, 3, 4, 5, 6])
    a = PGD(tiny_model, steps=3, random_start=True, seed=7)(images, targets).adv
    b = PGD(tiny_model, steps=3, random_start=True, seed=7)(images, targets).adv
    c = PGD(tiny_model, steps=3, random_start=True, seed=8)(images, targets).adv
    d = PGD(tiny_model, steps=3, random_start=False)(images, targets).adv
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)


def test_pgd_random_start_of_an_image_depends_on_its_own_seed_alone(tiny_model, x) -> None:
    targets = torch.tensor([1, 2, 3, 4, 5, 6])
    attack = PGD(tiny_model, steps=2, random_start=True)
    attack.use_seeds(range(6))
    forwards = attack(x, targets).x
    attack.use_seeds(reversed(range(6)))
    assert torch.equal(forwards, attack(x.flip(0), targets.flip(0)).x.flip(0))
    attack.use_seeds([9])
    with pytest.raises(ValueError, match="1 seeds set for 6 images"):
        attack(x, targets)


# ----------------------------------------------------------------------------------- losses


def test_cross_entropy_per_sample() -> None:
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    out = CrossEntropy()(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([math.log(2), 4 + math.log(1 + math.exp(-4))]))


def test_cw_margin_values() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0], [9.0, 0.0, 1.0], [0.0, 30.0, 0.0]])
    targets = torch.tensor([0, 0, 1])
    out = CWMargin(kappa=10.0)(logits, targets)
    # row 0: max other 5 − 1 = 4; row 1: 1 − 9 = −8; row 2: 0 − 30 = −30, clamped to −κ
    torch.testing.assert_close(out, torch.tensor([4.0, -8.0, -10.0]))
    torch.testing.assert_close(CWMargin(kappa=0.0)(logits, targets), torch.tensor([4.0, 0.0, 0.0]))


def test_label_smoothing_with_confidence_one_is_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen)
    t = torch.tensor([0, 6, 3, 3, 1])
    torch.testing.assert_close(LabelSmoothing(1.0)(logits, t), CrossEntropy()(logits, t))


@pytest.mark.parametrize("n_classes", [2, 10, 1000])
def test_label_smoothing_label_is_a_distribution(n_classes) -> None:
    conf = 0.9
    t = torch.tensor([0, n_classes - 1])
    # uniform logits: loss = −Σ label · log(1/C) = log C · Σ label, so Σ label = 1
    out = LabelSmoothing(conf)(torch.zeros(2, n_classes), t)
    torch.testing.assert_close(out, torch.full((2,), math.log(n_classes)))
    # the minimiser is softmax = label: the gradient vanishes at logits = log(label)
    label = torch.full((2, n_classes), (1 - conf) / (n_classes - 1), dtype=torch.float64)
    label[0, 0] = conf
    label[1, n_classes - 1] = conf
    logits = label.log().requires_grad_(True)
    (g,) = torch.autograd.grad(LabelSmoothing(conf)(logits, t).sum(), logits)
    assert g.abs().max() < 1e-8


def test_map_losses_per_sample() -> None:
    maps = torch.zeros(3, 1, 2, 2)
    target = torch.zeros(3, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0  # one cell off by 1
    target[1] = 0.5  # all cells off by 0.5
    target[2, 0, 1] = -0.2  # two cells off by 0.2
    torch.testing.assert_close(MapMSE()(maps, target), torch.tensor([0.25, 0.25, 0.02]))
    torch.testing.assert_close(MapL1()(maps, target), torch.tensor([0.25, 0.5, 0.1]))
    # a mean over cells: the value does not depend on the resolution
    big = F.interpolate(target, scale_factor=4, mode="nearest")
    torch.testing.assert_close(MapMSE()(torch.zeros_like(big), big), MapMSE()(maps, target))


@pytest.mark.parametrize("loss", [CrossEntropy(), CWMargin(), LabelSmoothing(0.8)])
def test_prediction_loss_does_not_depend_on_batch(loss) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=gen)
    t = torch.randint(10, (6,), generator=gen)
    together = loss(logits, t)
    assert together.shape == (6,)
    for i in range(6):
        torch.testing.assert_close(loss(logits[i:i + 1], t[i:i + 1]), together[i:i + 1])
    torch.testing.assert_close(loss(logits[[4, 1]], t[[4, 1]]), together[[4, 1]])


def test_logit_mse_sees_the_order_of_saturated_cells() -> None:
    target = torch.sigmoid(torch.tensor([[[[0.0, 1.0], [9.0, 12.0]]]]))
    assert MapLogitMSE()(target, target).item() == pytest.approx(0.0, abs=1e-8)
    shifted = torch.sigmoid(torch.tensor([[[[1.0, 1.0], [9.0, 12.0]]]]))  # one logit off by 1
    assert MapLogitMSE()(shifted, target).item() == pytest.approx(0.25, rel=1e-4)
    swapped = torch.sigmoid(torch.tensor([[[[0.0, 1.0], [12.0, 9.0]]]]))  # saturated cells swap
    assert MapMSE()(swapped, target).item() < 1e-8  # invisible to MSE on the values ...
    assert MapLogitMSE()(swapped, target).item() == pytest.approx(18 / 4, rel=0.02)  # ... not here


@pytest.mark.parametrize("loss", [MapMSE(), MapL1(), MapLogitMSE()])
def test_map_loss_does_not_depend_on_batch(loss) -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(5, 1, 7, 7, generator=gen), torch.rand(5, 1, 7, 7, generator=gen)
    together = loss(a, b)
    assert together.shape == (5,)
    for i in range(5):
        torch.testing.assert_close(loss(a[i:i + 1], b[i:i + 1]), together[i:i + 1])


def test_engine_gradient_of_one_image_does_not_depend_on_batch(tiny_model, images) -> None:
    """The engine differentiates Σ_i loss_i: image i's gradient is that of its own loss."""
    cam = CAM(tiny_model)
    x = to_tensor(images)
    t = torch.arange(6) % 10
    tm = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def grad(rows):
        xg = x[rows].clone().requires_grad_(True)
        logits, maps = cam.attack_forward(xg, t[rows], 0.0)
        loss = CrossEntropy()(logits, t[rows]) + 5.0 * MapMSE()(maps, tm[rows])
        return torch.autograd.grad(loss.sum(), xg)[0]

    full = grad(list(range(6)))
    torch.testing.assert_close(grad([2]), full[2:3], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grad([5, 0]), full[[5, 0]], atol=1e-6, rtol=1e-4)


# -------------------------------------------------------------------------------- schedules


def test_schedules() -> None:
    assert Constant(3.0)(0.0) == Constant(3.0)(0.7) == 3.0
    lin = Linear(5.0, 10.0)
    assert [lin(p) for p in (0.0, 0.5, 1.0)] == [5.0, 7.5, 10.0]
    assert lin(-1.0) == 5.0 and lin(2.0) == 10.0  # clamped
    pw = Piecewise((1.0, 2.0, 4.0), (0.3, 0.6))
    assert [pw(p) for p in (0.0, 0.29, 0.3, 0.5, 0.6, 0.99, 1.0)] == [1, 1, 2, 2, 4, 4, 4]


def test_parse_schedule() -> None:
    assert parse_schedule("5") == Constant(5.0)
    assert parse_schedule("5:10") == Linear(5.0, 10.0)
    assert parse_schedule("1e-3,4e-3,1e-2,5e-2@0.25,0.5,0.75") == Piecewise(
        (1e-3, 4e-3, 1e-2, 5e-2), (0.25, 0.5, 0.75))
    assert parse_schedule("1,2@0.5")(0.7) == 2.0
    with pytest.raises(ValueError):
        parse_schedule("abc")
    with pytest.raises(ValueError):
        parse_schedule("1,2,3@0.5")  # one boundary too few


@pytest.mark.parametrize("values,boundaries", [
    ((1.0, 2.0), ()),
    ((1.0, 2.0), (0.2, 0.4)),
    ((1.0, 2.0, 3.0), (0.6, 0.3)),
])
def test_piecewise_rejects_bad_boundaries(values, boundaries) -> None:
    with pytest.raises(ValueError):
        Piecewise(values, boundaries)


# ------------------------------------------------------------------------------- optimisers


def test_sign_step() -> None:
    opt = SignStep(lr=0.5)
    opt.reset(torch.zeros(2, 3))
    g = torch.tensor([[2.0, -0.1, 0.0], [-3.0, 1e-9, 4.0]])
    torch.testing.assert_close(opt.step(g, torch.tensor([0, 1])),
                               torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.5]]))


def _adam_reference(grads, lr, b1=0.9, b2=0.999, eps=1e-12):
    m = v = torch.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))
    return out


def test_adam_keeps_per_row_state() -> None:
    gen = torch.Generator().manual_seed(0)
    lr = 0.01
    grads = [torch.randn(3, 2, 4, 4, generator=gen) for _ in range(4)]
    opt = Adam(lr=lr)
    opt.reset(torch.zeros(3, 2, 4, 4))
    # row 0 steps 4 times, row 1 only at steps 2 and 4, row 2 never
    got0, got1 = [], []
    for s, g in enumerate(grads):
        rows = torch.tensor([0, 1]) if s % 2 == 1 else torch.tensor([0])
        upd = opt.step(g[rows], rows)
        got0.append(upd[0])
        if s % 2 == 1:
            got1.append(upd[1])
    ref0 = _adam_reference([g[0] for g in grads], lr)
    ref1 = _adam_reference([grads[1][1], grads[3][1]], lr)
    for a, b in zip(got0, ref0):
        torch.testing.assert_close(a, b)
    for a, b in zip(got1, ref1):
        torch.testing.assert_close(a, b)
    # the first Adam step has magnitude lr in every coordinate (bias-corrected)
    torch.testing.assert_close(got1[0].abs(), torch.full_like(got1[0], lr), atol=1e-6, rtol=1e-4)
    assert opt.t.tolist() == [4.0, 2.0, 0.0]
    assert (opt.m[2] == 0).all() and (opt.v[2] == 0).all()
    # reset clears the state
    opt.reset(torch.zeros(3, 2, 4, 4))
    assert opt.t.sum() == 0 and opt.m.abs().sum() == 0


# ------------------------------------------------------------------------------------- ADV²


def _adv2(model, interp, eps=24 / 255, steps=150, **kw) -> ADV2:
    kw.setdefault("lam", Linear(20.0, 40.0))
    kw.setdefault("optimizer", Adam(2 / 255))
    return ADV2(model, interp, eps=eps, steps=steps, warm_steps=40, **kw)


@pytest.mark.parametrize("kind", ["cam", "grad"])
def test_adv2_invariants(kind, setup, saturated_images) -> None:
    model, _, _, _ = setup
    imgs = saturated_images
    interp = CAM(model) if kind == "cam" else GRAD(model)
    with torch.no_grad():
        labels = model(to_tensor(imgs)).argmax(dim=1)
    targets = choose_targets(labels, N_CLASSES, seed=1, fixed=None)
    tmaps = target_maps.benign(interp, to_tensor(imgs), labels)
    eps = 8 / 255
    result = _adv2(model, interp, eps=eps, steps=15)(imgs, targets, tmaps)
    assert result.adv.dtype == np.uint8 and result.adv.shape == imgs.shape
    assert (_linf_uint8(result.adv, imgs) <= round(255 * eps)).all()
    # everything reported is a re-evaluation of the returned uint8 images
    x = to_tensor(result.adv)
    logits, maps = interp.explain(x, targets)
    assert torch.equal(result.success, _predicted(logits, targets))
    torch.testing.assert_close(result.maps, maps.detach())
    torch.testing.assert_close(result.l1, metrics.l1(maps.detach(), tmaps))
    torch.testing.assert_close(result.iou, metrics.iou(maps.detach(), tmaps))
    cost = 2 if kind == "grad" else 1
    assert (result.passes >= 1 + cost).all()
    assert (result.passes <= 41 + 16 * cost).all()


class _SpyCAM(CAM):
    """CAM that logs every evaluation the engine makes (iterate, logits, maps)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def explain(self, x, classes):
        logits, maps = super().explain(x, classes)
        self.log.append((x.detach().clone(), logits.detach(), maps.detach()))
        return logits, maps


def _descend_from_clean(setup, spy: _SpyCAM, steps: int):
    """``steps`` sign steps of 16/255 from the clean images, nobody stopping, judged by ``spy``; the
    target maps are the clean maps for the target class. Returns (x0, targets, maps, result)."""
    model, imgs, _, targets = setup
    x0 = to_tensor(imgs)
    with torch.no_grad():
        tmaps = CAM(model)(x0, targets)
    traj = Descent(model, Objective(CrossEntropy(), MapMSE(), Constant(1.0)), SignStep(), steps,
                   16 / 255, Stop(patience=None), spy).run(x0, x0, targets, tmaps)
    return x0, targets, tmaps, traj


def test_descend_selects_best_successful_iterate(setup) -> None:
    # target maps = the current maps for the target class: distance 0 at the start, where the
    # target is not predicted, so the lowest distance overall is an unsuccessful iterate
    spy = _SpyCAM(setup[0])
    steps = 25
    x0, targets, tmaps, traj = _descend_from_clean(setup, spy, steps)
    assert len(spy.log) == steps + 1  # nobody stops: every row is evaluated every step
    xs = torch.stack([e[0] for e in spy.log])
    ok = torch.stack([e[1].argmax(dim=1) == targets for e in spy.log])  # steps+1 × N
    dist = torch.stack([MapMSE()(e[2], tmaps) for e in spy.log])
    assert not ok[0].any() and (dist[0] == 0).all()
    assert ok.any(dim=0).any(), "the test needs some successful iterates"
    assert torch.equal(traj.found, ok.any(dim=0))
    for i in range(len(x0)):
        if not ok[:, i].any():
            assert traj.distance[i] == math.inf
            continue
        masked = torch.where(ok[:, i], dist[:, i], torch.inf)
        j = int(masked.argmin())
        assert dist[:, i].min() < masked[j]  # the unconstrained best is not eligible
        torch.testing.assert_close(traj.distance[i], masked[j])
        assert torch.equal(traj.x[i], xs[j, i])
    assert torch.equal(traj.passes, torch.full((len(x0),), steps + 1))


class _RarelyVerifiedCAM(_SpyCAM):
    """CAM posing as an interpreter whose attack values are not its true maps (like MASK), with
    scheduled verifications only at the first and last step; the spy log holds only the
    engine's verifications, ``attack_log`` the attack evaluations (iterate, logits)."""

    def verification(self) -> Verification:
        return Verification(every=1000)

    def __init__(self, model) -> None:
        super().__init__(model)
        self.attack_log: list[tuple[torch.Tensor, torch.Tensor]] = []

    def attack_forward(self, x, classes, progress, rows=None):
        logits, maps = CAM.explain(self, x, classes)
        self.attack_log.append((x.detach().clone(), logits.detach()))
        return logits, maps


def test_descend_verifies_an_iterate_as_soon_as_it_succeeds(setup) -> None:
    spy = _RarelyVerifiedCAM(setup[0])
    steps = 25
    x0, targets, _, traj = _descend_from_clean(setup, spy, steps)
    assert len(spy.attack_log) == steps  # every row is evaluated every step but the last
    ok = torch.stack([e[1].argmax(dim=1) == targets for e in spy.attack_log])  # steps × N
    assert not ok[0].any() and ok.any(dim=0).any(), "the test needs late successes"
    verified = [e[0] for e in spy.log]
    for i in range(len(x0)):
        if not ok[:, i].any():
            continue
        first = int(ok[:, i].float().argmax())
        # the first successful iterate was judged by the true interpreter at once ...
        assert any(torch.equal(row, spy.attack_log[first][0][i]) for v in verified for row in v)
        # ... so the image has a selected, successful iterate even if its last one fails
        assert traj.found[i] and math.isfinite(traj.distance[i])
    # verifications: everyone at the start and the end, plus each image once per regained success
    regained = (ok[1:] & ~ok[:-1]).sum() + ok[0].sum()
    assert sum(len(v) for v in verified) <= 2 * len(x0) + int(regained)
    assert sum(len(v) for v in verified) > 2 * len(x0)


def test_descend_without_success_selects_nothing(setup) -> None:
    model, imgs, _, _ = setup
    x0 = to_tensor(imgs)
    with torch.no_grad():
        hard = model(x0).argmin(dim=1)  # the least likely class, out of reach at 1/255
        tmaps = CAM(model)(x0, hard)
    traj = Descent(model, Objective(CrossEntropy(), MapMSE(), Constant(1.0)), SignStep(), 5,
                   1 / 255, Stop(patience=2), CAM(model)).run(x0, x0, hard, tmaps)
    assert not traj.found.any()
    assert torch.isinf(traj.distance).all()
    assert torch.equal(traj.x, x0)  # the start is kept: no unsuccessful iterate is selected
    # patience only ends a sample that has succeeded: every image ran all 5 steps
    assert torch.equal(traj.passes, torch.full((len(x0),), 6))


def test_adv2_unreachable_target_reports_failure(setup) -> None:
    model, imgs, labels, _ = setup
    x = to_tensor(imgs)
    with torch.no_grad():
        hard = model(x).argmin(dim=1)  # the least likely class
    interp = CAM(model)
    tmaps = target_maps.benign(interp, x, labels)
    eps = 1 / 255
    pgd = PGD(model, eps=eps, steps=10)(imgs, hard)
    assert pgd.success.sum() == 0, "the target must be unreachable for this test"
    result = _adv2(model, interp, eps=eps, steps=10)(imgs, hard, tmaps)
    assert result.success.sum() == 0
    with torch.no_grad():
        pred = model(to_tensor(result.adv)).argmax(dim=1)
    assert (pred != hard).all()
    assert torch.equal(result.pred, pred)
    assert (_linf_uint8(result.adv, imgs) <= 1).all()


def test_adv2_end_to_end_beats_pgd_on_map_distance(setup) -> None:
    model, imgs, labels, targets = setup
    interp = CAM(model)
    x = to_tensor(imgs)
    benign = target_maps.benign(interp, x, labels)
    eps = 24 / 255
    pgd = PGD(model, interp, eps=eps, steps=40)(imgs, targets, benign)
    adv = _adv2(model, interp, eps=eps)(imgs, targets, benign)
    assert pgd.success.mean() == 1.0
    assert adv.success.mean() == 1.0
    assert adv.l1.mean() < 0.5 * pgd.l1.mean()
    assert adv.iou.mean() > pgd.iou.mean()
    assert (_linf_uint8(adv.adv, imgs) <= 24).all()


def test_adv2_and_pgd_are_deterministic(setup) -> None:
    model, imgs, labels, targets = setup
    interp = CAM(model)
    tmaps = target_maps.benign(interp, to_tensor(imgs), labels)
    a = _adv2(model, interp, steps=20)(imgs, targets, tmaps)
    b = _adv2(make_tiny_model(0), CAM(make_tiny_model(0)), steps=20)(imgs, targets, tmaps)
    assert np.array_equal(a.adv, b.adv)
    assert torch.equal(a.l1, b.l1)
    p1 = PGD(model, steps=5, random_start=True, seed=1)(imgs, targets)
    p2 = PGD(make_tiny_model(0), steps=5, random_start=True, seed=1)(imgs, targets)
    assert np.array_equal(p1.adv, p2.adv)


def test_judge_linf_and_passes(tiny_model, images) -> None:
    adv = images.copy()
    v = int(images[0, 3, 4, 1])
    adv[0, 3, 4, 1] = v + 5 if v <= 250 else v - 5
    adv[2] = 255 - images[2]
    passes = torch.tensor([1, 2, 3, 4, 5, 6])
    res = judge(adv, images, torch.zeros(6, dtype=torch.long), tiny_model, passes)
    expected = _linf_uint8(adv, images)
    assert expected[0] == 5 and expected[1] == 0
    assert expected[2] == np.abs(255 - 2 * images[2].astype(int)).max()
    assert torch.equal(res.linf.long(), torch.from_numpy(expected).long())
    assert res.maps is None and res.l1 is None
    assert torch.equal(res.passes, passes)


# ---------------------------------------------------------------------------- target classes


def test_choose_targets_never_label_and_seeded() -> None:
    labels = torch.arange(1000) % 10
    a = choose_targets(labels, 10, seed=0, fixed=None)
    b = choose_targets(labels, 10, seed=0, fixed=None)
    c = choose_targets(labels, 10, seed=1, fixed=None)
    assert (a != labels).all() and (c != labels).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < 10)).all()
    # roughly uniform over the 9 other classes
    for y in range(10):
        counts = torch.bincount(a[labels == y], minlength=10)
        assert counts[y] == 0 and (counts.sum() - counts[y]) == 100
        assert (counts[torch.arange(10) != y] > 0).all()


def test_choose_targets_allowed_and_fixed() -> None:
    labels = torch.tensor([0, 1, 2, 3, 4])
    allowed = torch.tensor([1, 1, 3])
    out = choose_targets(labels, 10, seed=0, fixed=None, allowed=allowed)
    assert set(out.tolist()) <= {1, 3}
    assert (out != labels).all()
    assert out[1] == 3 and out[3] == 1
    assert choose_targets(labels, 10, 0, fixed=7).tolist() == [7] * 5
    with pytest.raises(ValueError):
        choose_targets(torch.tensor([1]), 10, 0, None, allowed=torch.tensor([1]))


# ------------------------------------------------------------------------------ step search


class _Linear2(torch.nn.Module):
    """logits = (x̄ − 0.5, 0): class 0 leads iff the mean pixel is above 1/2, by x̄ − 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).mean(dim=1) - 0.5
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_margin_step_search_is_per_example() -> None:
    """Each image gets the largest bisection fraction that keeps its own margin ≥ κ; an image
    whose full step passes keeps it, and one that already fails takes the full step."""
    from adv2.attacks import MarginStepSearch

    model = _Linear2()
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.9, 0.62, 0.9, 0.3)])
    update = torch.full_like(x, 0.2)  # subtracting lowers the margin by 0.2 at full step
    targets = torch.zeros(4, dtype=torch.long)
    kappa = 0.29
    current = model(x)[:, 0]
    search = MarginStepSearch(kappa=kappa, bisections=3)
    scaled, spent = search(model, x, update, lambda c, i: c, targets, current)
    scale = scaled.flatten(1)[:, 0] / 0.2
    # image 0: margin 0.4 → 0.2 at the full step < κ, so bisection: the largest passing
    # fraction of {1/2, 3/4, 5/8} with 0.4 − 0.2 s ≥ 0.29, i.e. s ≤ 0.55 → 1/2
    assert scale[0] == pytest.approx(0.5)
    # image 1: margin 0.12 < κ already: full step, no search
    assert scale[1] == pytest.approx(1.0) and spent[1] == 0
    # image 2 is the same as image 0 whatever the batch holds
    assert scale[2] == pytest.approx(0.5) and spent[0] == spent[2] == 4
    # image 3: margin −0.2 fails: full step
    assert scale[3] == pytest.approx(1.0)
    # a small step that keeps the margin passes whole, at the cost of one forward pass
    scaled, spent = search(model, x[:1], update[:1] / 4, lambda c, i: c, targets[:1], current[:1])
    assert torch.equal(scaled, update[:1] / 4) and spent.tolist() == [1]


def test_adv2_with_step_search_keeps_success(setup) -> None:
    """With the search, ADV² succeeds wherever it does without, stays in the ball and counts
    the extra passes."""
    from adv2.attacks import MarginStepSearch

    model, images, labels, targets = setup
    interp = CAM(model)
    benign = target_maps.benign(interp, to_tensor(images), labels)
    plain = ADV2(model, interp, eps=16 / 255, steps=10, patience=None)(images, targets, benign)
    searched = ADV2(model, interp, eps=16 / 255, steps=10, patience=None,
                    step_search=MarginStepSearch(kappa=0.5))(images, targets, benign)
    assert (searched.success >= plain.success).all() and searched.success.sum() >= 5
    assert (_linf_uint8(searched.adv, images) <= 16).all()
    won = plain.success.bool()  # only images that lead search (one forward per candidate)
    assert (searched.passes[won] > plain.passes[won]).all()
    assert torch.equal(searched.passes[~won], plain.passes[~won])


# -------------------------------------------------------------------------------- λ search


class _ScriptedDescent:
    """A stand-in for :class:`Descent` whose runs return scripted outcomes per image (whether
    a successful iterate was kept, whether it bettered the start, its distance) and log the λ
    scales they were given."""

    def __init__(self, outcomes: list[tuple[list[bool], list[bool], list[float]]]) -> None:
        self.outcomes, self.scales = iter(outcomes), []

    def run(self, x0, x_start, targets, target_maps, support=None, lam_scale=None):
        from adv2.attacks.iterates import Trajectory

        found, improved, distance = next(self.outcomes)
        self.scales.append(None if lam_scale is None else lam_scale.tolist())
        n = len(found)
        marked = x0.clone() + len(self.scales)  # which run an iterate came from
        return Trajectory(marked, torch.tensor(found), torch.tensor(distance),
                          torch.full((n,), 10, dtype=torch.long), torch.tensor(improved))


def test_lam_search_moves_each_lambda_and_keeps_the_best() -> None:
    from adv2.attacks.lam_search import LamSearch

    inf = math.inf
    # image 0 improves every time; 1 fails at 1, improves at 1/4; 2 improves at 1, at 4 keeps
    # only its (successful) start: not an improvement, so its λ goes back down
    descent = _ScriptedDescent([([True, False, True], [True, False, True], [0.5, inf, 0.3]),
                                ([True, True, True], [True, True, False], [0.2, 0.4, 0.35]),
                                ([True, True, True], [True, True, True], [0.3, 0.1, 0.1])])
    x0 = torch.zeros(3, 3, 4, 4)
    out = LamSearch(runs=2, factor=4.0)(descent, x0, x0, torch.zeros(3),
                                        torch.zeros(3, 1, 2, 2))
    assert descent.scales[0] is None
    assert descent.scales[1] == [4.0, 0.25, 4.0]
    # between a success and a failure: the geometric mean (√(1/4·1), √(1·4))
    assert descent.scales[2] == pytest.approx([16.0, 0.5, 2.0])
    assert out.found.tolist() == [True, True, True]
    assert out.distance.tolist() == pytest.approx([0.2, 0.1, 0.1])
    assert [out.x[i].max().item() for i in range(3)] == [2.0, 3.0, 3.0]  # the run it came from
    assert out.passes.tolist() == [30, 30, 30]


def test_lam_search_never_loses_a_success_and_never_worsens_the_map(setup) -> None:
    from adv2.attacks.lam_search import LamSearch

    model, imgs, labels, targets = setup
    interp = CAM(model)
    tmaps = target_maps.benign(interp, to_tensor(imgs), labels)
    one = _adv2(model, interp, eps=8 / 255, steps=15)(imgs, targets, tmaps)
    searched = _adv2(model, interp, eps=8 / 255, steps=15,
                     lam_search=LamSearch(runs=2))(imgs, targets, tmaps)
    assert (searched.success >= one.success).all()
    # the selection's distance (the map loss) of the true maps on the uint8 images
    ok = one.success > 0
    assert ok.any()
    assert (MapMSE()(searched.maps, tmaps)[ok] <= MapMSE()(one.maps, tmaps)[ok] + 1e-6).all()
    assert (searched.passes > one.passes).all()
    assert (_linf_uint8(searched.adv, imgs) <= 8).all()
    again = _adv2(model, interp, eps=8 / 255, steps=15,
                  lam_search=LamSearch(runs=2))(imgs, targets, tmaps)
    assert np.array_equal(searched.adv, again.adv)


def test_lam_search_is_a_setting(tiny_model) -> None:
    from adv2.attacks import AttackSettings
    from adv2.attacks.lam_search import LamSearch

    attack = AttackSettings(lam_search=2).resolved(CAM).build(tiny_model, CAM(tiny_model))
    assert attack.lam_search == LamSearch(runs=2)
    assert attack.config()["lam_search"]["runs"] == 2
    assert AttackSettings().resolved(CAM).build(tiny_model, CAM(tiny_model)).lam_search is None
    with pytest.raises(ValueError):
        LamSearch(runs=1, factor=1.0)
    with pytest.raises(ValueError):
        LamSearch(runs=0)  # no search is None, one spelling


def test_descent_lam_scale_is_a_per_image_lambda(setup) -> None:
    from adv2.attacks import Scaled

    model, imgs, labels, targets = setup
    interp = CAM(model)
    x0 = to_tensor(imgs)
    tmaps = target_maps.benign(interp, x0, labels)

    warm = PGD(model, eps=24 / 255, steps=40, stop_on_success=True).run(x0, targets).x

    def descend(lam, scale=None):
        return Descent(model, Objective(CrossEntropy(), MapMSE(), lam), Adam(2 / 255), 8,
                       24 / 255, Stop(), interp).run(x0, warm, targets, tmaps, lam_scale=scale)

    n = len(x0)
    scaled = descend(Linear(2.0, 4.0), torch.full((n,), 8.0))
    assert torch.equal(scaled.x, descend(Scaled(Linear(2.0, 4.0), 8.0)).x)
    plain = descend(Linear(2.0, 4.0))
    one = torch.ones(n)
    one[0] = 8.0
    mixed = descend(Linear(2.0, 4.0), one)
    assert torch.equal(mixed.x[1:], plain.x[1:]) and torch.equal(mixed.x[0], scaled.x[0])
    assert plain.found[0] and not torch.equal(plain.x[0], scaled.x[0])
    # the start is judged first: it was not bettered only where the distance stayed the start's
    assert plain.improved.dtype == torch.bool and plain.improved.any()


def test_attack_defaults_with_an_unknown_key_are_an_error_naming_it() -> None:
    from adv2.attacks import AttackSettings, SettingError

    class Misspelt(CAM):
        name = "misspelt"
        attack_defaults = {**CAM.attack_defaults, "warmsteps": 10}

    with pytest.raises(SettingError, match="'misspelt' with attack 'adv2'.*warmsteps"):
        AttackSettings(attack="adv2").resolved(Misspelt)
    assert AttackSettings(attack="adv2").resolved(CAM).warm_steps == CAM.attack_defaults[
        "warm_steps"]


# ------------------------------------------------------------------------------------ registry


class Unmoved:
    """A toy attack: returns the clean images, judged (what a registered attack must do)."""

    def __init__(self, model, interpreter, eps: float, steps: int) -> None:
        self.model, self.interpreter, self.eps, self.steps = model, interpreter, eps, steps

    @classmethod
    def from_settings(cls, settings, model, interpreter) -> Unmoved:
        return cls(model, interpreter, settings.eps, settings.steps)

    def __call__(self, x, targets, target_maps=None, support=None):
        from adv2.attacks.result import as_batch, home_of

        x0 = as_batch(x, next(self.model.parameters()).device)
        return judge(x0, x0, targets.to(x0.device), self.model, torch.zeros(len(x0)),
                     self.interpreter, target_maps).to(home_of(x))

    def config(self) -> dict:
        return {"attack": "unmoved", "eps": self.eps, "steps": self.steps}


@pytest.fixture
def unmoved(monkeypatch):
    """The toy attack registered as ``unmoved`` (display name ``Unmoved``, 3 steps)."""
    from adv2.attacks import ATTACKS, AttackEntry

    entry = AttackEntry(Unmoved, "Unmoved", lambda interpreter, support: {"steps": 3},
                        Unmoved.from_settings)
    monkeypatch.setitem(ATTACKS, "unmoved", entry)
    return entry


def test_the_registry_builds_each_attack_from_its_settings(tiny_model) -> None:
    from adv2.attacks import ATTACKS, AttackSettings
    from adv2.attacks.pgd import PGD_DEFAULTS

    cam = CAM(tiny_model)
    assert set(ATTACKS) == {"pgd", "adv2"}
    assert ATTACKS["pgd"].defaults(CAM, "full") == PGD_DEFAULTS
    assert ATTACKS["adv2"].defaults(CAM, "full") == CAM.attack_defaults
    for name, entry in ATTACKS.items():
        settings = AttackSettings(attack=name, eps=4 / 255).resolved(CAM)
        for key, value in entry.defaults(CAM, "full").items():
            assert getattr(settings, key) == value
        attack = settings.build(tiny_model, cam)
        assert type(attack) is entry.cls and attack.eps == 4 / 255
        assert attack.config()["attack"] == name and attack.config()["steps"] == settings.steps
        assert attack.config() == entry.build(settings, tiny_model, cam).config()


def test_adaptive_adv2_is_the_registered_adaptive_form_of_adv2(tiny_model, tmp_path) -> None:
    """Settings with ``adaptive`` (detector files) build ADV²'s adaptive form: the ADV² they
    describe, with the adaptive defaults over ADV²'s, wrapped to evade each file's detector; an
    attack without an adaptive form refuses the setting, naming those with one."""
    from adv2.attacks import ATTACKS, AdaptiveADV2, AttackSettings, SettingError
    from adv2.attacks.adaptive import ADAPTIVE_DEFAULTS
    from adv2.detection import FeatureSqueezingDetector

    form = ATTACKS["adv2"].adaptive
    assert (form.cls, form.display_name, form.differentiates) == (AdaptiveADV2, "adaptive ADV²",
                                                                  True)
    assert form.defaults(CAM, "full") == {**CAM.attack_defaults, **ADAPTIVE_DEFAULTS}
    assert ATTACKS["pgd"].adaptive is None and ATTACKS["adv2"].black_box.adaptive is None
    path = tmp_path / "fs.json"
    FeatureSqueezingDetector(tiny_model, ["bit-3"]).fit(make_images(8, seed=1), 0.2).save(path)
    cam = CAM(tiny_model)
    settings = AttackSettings(adaptive=str(path), warm_steps=2).resolved(CAM)
    assert settings.entry() is form
    assert (settings.steps, settings.patience, settings.warm_steps) == (200, 0, 2)
    attack = settings.build(tiny_model, cam)
    assert isinstance(attack, AdaptiveADV2) and (attack.steps, attack.patience) == (200, None)
    assert attack.attack.config() == ADV2.from_settings(settings, tiny_model, cam).config()
    both = AttackSettings(adaptive=(str(path), str(path)), steps=3).resolved(CAM)
    assert len(both.build(tiny_model, cam).guards) == 2
    for refused in (AttackSettings(attack="pgd", adaptive=str(path)),
                    AttackSettings(threat="black-box", adaptive=str(path))):
        with pytest.raises(SettingError, match="has no adaptive form; the attacks with one "
                                               "are adv2") as info:
            refused.resolved(CAM)
        assert info.value.key == "adaptive"


def test_an_unknown_attack_is_an_error_naming_it_and_the_known_ones(tiny_model) -> None:
    from adv2.attacks import AttackSettings

    with pytest.raises(ValueError, match="'nope'.*pgd, adv2"):
        AttackSettings(attack="nope").resolved(CAM)
    with pytest.raises(ValueError, match="'nope'.*pgd, adv2"):
        AttackSettings(attack="nope", steps=1).build(tiny_model, CAM(tiny_model))


def test_display_names_come_from_the_registry(unmoved) -> None:
    from adv2.attacks import ATTACKS, DISPLAY_NAMES

    assert dict(DISPLAY_NAMES) == {name: e.display_name for name, e in ATTACKS.items()}
    assert (DISPLAY_NAMES["pgd"], DISPLAY_NAMES["adv2"]) == ("PGD", "ADV²")
    assert DISPLAY_NAMES["unmoved"] == "Unmoved"


def test_a_registered_toy_attack_is_built_from_settings(tiny_model, images, unmoved) -> None:
    from adv2 import pipeline
    from adv2.attacks import AttackSettings

    cam = CAM(tiny_model)
    attack = AttackSettings(attack="unmoved").resolved(CAM).build(tiny_model, cam)
    assert isinstance(attack, Unmoved) and attack.steps == 3  # its entry's defaults
    assert AttackSettings(attack="unmoved", steps=5).resolved(CAM).build(tiny_model, cam).steps \
        == 5
    cfg = pipeline.AttackConfig(attack="unmoved", interpreter="cam")
    cfg.validate(N_CLASSES)  # a registered name is a valid setting
    built = pipeline.build_attack(cfg, tiny_model, cam)
    assert built.config() == {"attack": "unmoved", "eps": 8 / 255, "steps": 3}
    targets = torch.arange(len(images)) % N_CLASSES
    result = built(images, targets)
    assert np.array_equal(result.adv, images) and result.linf.max() == 0


def test_configs_record_their_settings_in_field_order(tiny_model) -> None:
    """config() is the attack's recorded fields (settings.recorded), in the order of the
    records: the model, the hooks and the warm start's knobs are no recorded setting."""
    from adv2.attacks.settings import describe

    pgd = PGD(tiny_model, CAM(tiny_model), stop_on_success=True)
    assert list(pgd.config()) == ["attack", "eps", "step_size", "steps", "random_start",
                                  "seed", "loss"]
    assert pgd.config()["loss"] == {"name": "CrossEntropy"}
    adv2 = ADV2(tiny_model, CAM(tiny_model), observer=print)
    assert list(adv2.config()) == ["attack", "eps", "steps", "lam", "pred_loss", "map_loss",
                                   "optimizer", "step_scale", "step_search", "warm_steps",
                                   "warm_confidence", "patience", "lam_search", "interpreter"]
    assert adv2.config()["lam"] == {"name": "Linear", "start": 5.0, "end": 10.0}
    assert describe([adv2]) == [adv2.config()]  # a part with a config() describes itself


def test_a_support_outside_zero_one_is_refused_not_a_wider_ball() -> None:
    model = make_tiny_model()
    x = to_tensor(make_images(2, seed=1))
    targets = torch.tensor([1, 2])
    for support in (torch.full((2, 1, *x.shape[2:]), 3.0),
                    torch.full((2, 1, *x.shape[2:]), math.nan)):
        with pytest.raises(ValueError, match=r"support takes values in \[0, 1\]"):
            PGD(model, eps=8 / 255, steps=2)(x, targets, support=support)


def test_pgd_keeps_its_last_successful_iterate_not_a_later_failure() -> None:
    from adv2.attacks.iterates import Best
    x = torch.zeros(2, 3, 4, 4)
    best = Best.start(x)
    rows = torch.tensor([0, 1])
    best.keep_last(rows, x + 1 / 255, torch.tensor([True, False]))
    best.keep_last(rows, x + 2 / 255, torch.tensor([False, False]))
    assert best.found.tolist() == [True, False]
    assert torch.equal(best.chosen[0], x[0] + 1 / 255)  # the success, not the later failure
    assert torch.equal(best.chosen[1], x[1] + 2 / 255)  # no success yet: the last iterate


def test_an_iterate_whose_distance_is_not_finite_is_never_kept() -> None:
    from adv2.attacks.iterates import Best
    x = torch.zeros(1, 3, 4, 4)
    best = Best.start(x)
    best.keep_best(torch.tensor([0]), x + 1 / 255, torch.tensor([True]),
                   torch.tensor([math.nan]), 0.0)
    assert not best.found.item() and torch.equal(best.chosen, x)


def test_settings_refuse_a_non_finite_lam_and_a_random_start_for_adv2() -> None:
    from adv2.attack_config import AttackConfig
    from adv2.errors import SettingError
    for lam in ("nan", "5:inf", "1,nan@0.5"):
        with pytest.raises(SettingError, match="lam"):
            AttackConfig(attack="adv2", lam=lam).validate()
    with pytest.raises(SettingError, match="random_start: ADV² starts from its PGD warm start"):
        AttackConfig(attack="adv2", random_start=True).validate()
    AttackConfig(attack="pgd", random_start=True).validate()
