"""Integrated Gradients, SmoothGrad and Grad-CAM: Captum's maps in Captum's batch layout (tiny
model, a random ResNet-18, EfficientNet-Lite0), the per-image seed protocol, the attack's map
values and gradients, ADV² end to end, and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency
from torch import nn

from adv2 import metrics, pipeline, target_maps
from adv2.attacks import ADV2, PGD, MapMSE
from adv2.data import load_image, sample_key, to_tensor
from adv2.interpreters import IG, GradCAM, SmoothGrad, Verification, build_interpreter, minmax
from adv2.interpreters import gradcam as gradcam_module
from adv2.interpreters.grad import gradient_map
from adv2.interpreters.smoothgrad import gaussian_noise
from adv2.models import Classifier, PoolLinear, load_model
from adv2.outcome import Outcome
from adv2.target_classes import choose_targets, interpreter_seeds
from conftest import IMAGENET_SAMPLE, N_CLASSES, make_images, make_tiny_model

#: the largest difference allowed between adv2's and Captum's final maps
TOL = 1e-5



@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """A seeded random ResNet-18 built as ``adv2 attack --model resnet18`` builds it (from a
    weights file), three 96×96 images and three different classes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = load_model("resnet18", weights=path)
    x = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([3, 500, 981])


@pytest.fixture(scope="module")
def lite0() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """EfficientNet-Lite0 (embedded weights), two 224×224 images (the shared sample's first
    two when present, else random ones) and their predicted classes."""
    model = load_model()
    files = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[:2] if IMAGENET_SAMPLE.is_dir() else []
    x = to_tensor(np.stack([load_image(f) for f in files])) if files \
        else torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, x, model(x).argmax(dim=1)


# ------------------------------------------------------------------------ Captum's maps


def captum_ig(model: Classifier, ig: IG, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Captum's IntegratedGradients with ``ig``'s rule, steps, batch size and baselines, as a
    GRAD-like map."""
    attr = IntegratedGradients(model).attribute(
        x, baselines=ig.baselines(x, ig.image_seeds(len(x))), target=classes, n_steps=ig.steps,
        method=ig.method, internal_batch_size=ig.internal_batch_size)
    return gradient_map(attr, ig.pool)


def captum_smoothgrad(model: Classifier, sg: SmoothGrad, x: torch.Tensor, classes: torch.Tensor,
                      monkeypatch) -> torch.Tensor:
    """Captum's NoiseTunnel(Saliency) on ``sg``'s noise (each image's from its seed, in one
    partition), as a GRAD-like map."""
    seeds, calls = sg.image_seeds(len(x)), []

    def same_noise(input: torch.Tensor, stdev: float, n: int) -> torch.Tensor:
        calls.append((stdev, n))
        noise = torch.cat([gaussian_noise(s, n, tuple(input.shape[1:]), stdev) for s in seeds])
        return input.repeat_interleave(n, 0) + noise.to(input)

    with monkeypatch.context() as patch:
        patch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
        attr = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad",
                                                      nt_samples=sg.samples, stdevs=sg.sigma,
                                                      target=classes)
    assert calls == [(sg.sigma, sg.samples)]  # σ is Captum's stdevs; one partition
    return gradient_map(attr, sg.pool)


def captum_gradcam(model: Classifier, layer: str, x: torch.Tensor,
                   classes: torch.Tensor) -> torch.Tensor:
    attr = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=classes,
                                                                     relu_attributions=True)
    return minmax(attr.detach())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.detach() - b.detach()).abs().max())


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("baseline", ["black", "blur", "uniform"])
def test_ig_is_captums_on_the_tiny_model(method, baseline, tiny_model, x, classes) -> None:
    # 20 rows per pass for 6 images: 3 points per pass, the last pass partial
    ig = IG(tiny_model, steps=11, method=method, baseline=baseline, internal_batch_size=20)
    ig.use_seeds(range(7, 7 + len(x)))
    assert max_diff(ig(x, classes), captum_ig(tiny_model, ig, x, classes)) <= TOL


def test_ig_in_one_pass_is_captums(tiny_model, x, classes) -> None:
    ig = IG(tiny_model, steps=16, internal_batch_size=None)
    assert max_diff(ig(x, classes), captum_ig(tiny_model, ig, x, classes)) <= TOL
    # the batching changes nothing but the rounding
    assert max_diff(IG(tiny_model, steps=16, internal_batch_size=7)(x, classes),
                    ig(x, classes)) <= TOL


@pytest.mark.parametrize("sigma", [0.15, 0.4])
def test_smoothgrad_is_captums_on_the_same_noise(sigma, tiny_model, x, classes,
                                                  monkeypatch) -> None:
    sg = SmoothGrad(tiny_model, samples=10, sigma=sigma, internal_batch_size=None)
    sg.use_seeds([5, 3, 3, 8, 1, 2])  # two images share a seed
    ours = sg(x, classes)
    assert max_diff(ours, captum_smoothgrad(tiny_model, sg, x, classes, monkeypatch)) <= TOL
    # passes of 7 rows (one point per image) give the same map
    chunked = SmoothGrad(tiny_model, samples=10, sigma=sigma, internal_batch_size=7)
    chunked.use_seeds([5, 3, 3, 8, 1, 2])
    assert max_diff(chunked(x, classes), ours) <= TOL


@pytest.mark.parametrize("layer", ["body", "body.0"])
def test_gradcam_is_captums_on_the_tiny_model(layer, tiny_model, x, classes) -> None:
    gc = GradCAM(tiny_model, layer=layer)
    maps = gc(x, classes)
    assert maps.shape[-2:] == tuple(gc.resolution(32, 32)) == ((8, 8) if layer == "body"
                                                                  else (16, 16))
    assert max_diff(maps, captum_gradcam(tiny_model, layer, x, classes)) <= TOL


@pytest.mark.parametrize("method, baseline", [("riemann_middle", "black"),
                                              ("riemann_trapezoid", "blur"),
                                              ("gausslegendre", "uniform")])
def test_ig_is_captums_on_resnet18(method, baseline, resnet) -> None:
    model, x, classes = resnet
    ig = IG(model, steps=5, method=method, baseline=baseline, internal_batch_size=7)
    ig.use_seeds([1, 2, 3])
    assert max_diff(ig(x, classes), captum_ig(model, ig, x, classes)) <= TOL


def test_smoothgrad_and_gradcam_are_captums_on_resnet18(resnet, monkeypatch) -> None:
    model, x, classes = resnet
    sg = SmoothGrad(model, samples=4, internal_batch_size=None)
    sg.use_seeds([9, 8, 7])
    assert max_diff(sg(x, classes), captum_smoothgrad(model, sg, x, classes, monkeypatch)) <= TOL
    assert model.get_submodule("body.6") is model.body[6]  # layer3: (64/16)² → 6×6 for 96²
    for layer, size in (("body", 3), ("body.6", 6)):
        maps = GradCAM(model, layer=layer)(x, classes)
        assert maps.shape == (3, 1, size, size)
        assert max_diff(maps, captum_gradcam(model, layer, x, classes)) <= TOL


@pytest.mark.slow
def test_ig_is_captums_on_lite0(lite0) -> None:
    model, x, classes = lite0
    for method, baseline in (("riemann_trapezoid", "black"), ("gausslegendre", "blur")):
        ig = IG(model, steps=4, method=method, baseline=baseline, internal_batch_size=4)
        assert max_diff(ig(x, classes), captum_ig(model, ig, x, classes)) <= TOL


@pytest.mark.slow
def test_smoothgrad_and_gradcam_are_captums_on_lite0(lite0, monkeypatch) -> None:
    model, x, classes = lite0
    sg = SmoothGrad(model, samples=3, internal_batch_size=None)
    sg.use_seeds([4, 5])
    assert max_diff(sg(x, classes), captum_smoothgrad(model, sg, x, classes, monkeypatch)) <= TOL
    for layer, size in (("body", 7), ("body.inner.blocks.4", 14)):
        gc = GradCAM(model, layer=layer)
        assert tuple(gc.resolution(224, 224)) == (size, size)
        maps = gc(x, classes)
        assert maps.shape == (2, 1, size, size)
        assert max_diff(maps, captum_gradcam(model, layer, x, classes)) <= TOL


# --------------------------------------------------------------------- the seed protocol


def test_smoothgrad_maps_are_a_function_of_image_class_and_seed(tiny_model, x, classes) -> None:
    seeds = [101, 102, 103, 104, 105, 106]
    a = SmoothGrad(tiny_model, samples=8)
    a.use_seeds(seeds)
    maps = a(x, classes)
    b = SmoothGrad(make_tiny_model(0), samples=8)  # another instance, another model object
    b.use_seeds(seeds)
    assert torch.equal(b(x, classes), maps)
    # another batch in between (its own noise) does not change the next maps
    a.use_seeds(seeds[:2])
    a(x[3:5], classes[3:5])
    a.use_seeds(seeds)
    assert torch.equal(a(x, classes), maps)
    # one image alone with its seed, or in another order, gets the map of its row
    for i in (0, 4):
        b.use_seeds([seeds[i]])
        torch.testing.assert_close(b(x[i:i + 1], classes[i:i + 1]), maps[i:i + 1],
                                   atol=1e-6, rtol=0)
    order = torch.tensor([5, 2, 0, 1, 4, 3])
    b.use_seeds([seeds[i] for i in order])
    torch.testing.assert_close(b(x[order], classes[order]), maps[order], atol=1e-6, rtol=0)
    # another seed, another map for every image
    b.use_seeds([s + 1000 for s in seeds])
    other = b(x, classes)
    assert ((other - maps).flatten(1).abs().amax(dim=1) > 1e-2).all()


@pytest.mark.parametrize("kind, settings", [("smoothgrad", {"samples": 6}),
                                            ("ig", {"steps": 6, "baseline": "uniform"})])
def test_explain_rows_are_the_rows_of_explain(kind, settings, tiny_model, x, classes) -> None:
    interp = build_interpreter(kind, tiny_model, **settings)
    assert interp.stochastic
    interp.use_seeds([21, 22, 23, 24, 25, 26])
    logits, maps = interp.explain(x, classes)
    for rows in (torch.tensor([4, 1]), torch.tensor([2]), torch.arange(6)):
        row_logits, row_maps = interp.explain_rows(x[rows], classes[rows], rows)
        torch.testing.assert_close(row_maps, maps[rows], atol=1e-6, rtol=0)
        torch.testing.assert_close(row_logits, logits[rows])
    # the rows' own seeds matter: other rows' seeds give other maps
    _, wrong = interp.explain_rows(x[[4, 1]], classes[[4, 1]], torch.tensor([0, 2]))
    assert (wrong - maps[[4, 1]]).abs().amax() > 1e-2


def test_image_seeds_default_set_and_mismatch(tiny_model, x, classes) -> None:
    sg = SmoothGrad(tiny_model, samples=4, seed=5)
    assert sg.image_seeds(3) == [5, 5, 5]  # unseeded: the interpreter's seed for every image
    unseeded = sg(x[:3], classes[:3])
    sg.use_seeds([5, 5, 5])
    assert torch.equal(sg(x[:3], classes[:3]), unseeded)
    sg.use_seeds([1, 2, 3])
    assert sg.image_seeds(3) == [1, 2, 3]
    assert sg.image_seeds(2, torch.tensor([2, 0])) == [3, 1]
    with pytest.raises(ValueError, match=r"smoothgrad: 3 seeds set for 2 images; call use_seeds"):
        sg.image_seeds(2)
    with pytest.raises(ValueError, match="3 seeds set for 4 images"):
        sg(x[:4], classes[:4])
    sg.use_seeds(None)
    assert sg.image_seeds(4) == [5] * 4
    # an interpreter without a seed setting defaults to 0
    assert GradCAM(tiny_model).image_seeds(2) == [0, 0]


def test_deterministic_interpreters_ignore_seeds(tiny_model, x, classes) -> None:
    assert SmoothGrad.stochastic and not IG.stochastic and not GradCAM.stochastic
    assert IG(tiny_model, baseline="uniform").stochastic
    assert not IG(tiny_model, baseline="blur").stochastic
    for interp in (IG(tiny_model, steps=4, baseline="blur"), GradCAM(tiny_model, layer="body.0")):
        plain = interp(x, classes)
        interp.use_seeds(range(len(x)))
        assert torch.equal(interp(x, classes), plain)
        _, rows = interp.explain_rows(x[[3, 0]], classes[[3, 0]], torch.tensor([3, 0]))
        torch.testing.assert_close(rows, plain[[3, 0]], atol=1e-6, rtol=0)


def test_ig_uniform_baseline_is_drawn_from_each_images_seed(tiny_model, x, classes) -> None:
    ig = IG(tiny_model, steps=6, baseline="uniform")
    b = ig.baselines(x[:3], [1, 2, 3])
    assert b.shape == x[:3].shape and b.min() >= 0 and b.max() <= 1
    assert torch.equal(ig.baselines(x[1:2], [2]), b[1:2])  # its own seed only
    assert not torch.equal(b[0], b[1])
    ig.use_seeds([1, 2, 3, 4, 5, 6])
    maps = ig(x, classes)
    again = IG(make_tiny_model(0), steps=6, baseline="uniform")
    again.use_seeds([1, 2, 3, 4, 5, 6])
    assert torch.equal(again(x, classes), maps)
    again.use_seeds([7, 8, 9, 10, 11, 12])
    assert ((again(x, classes) - maps).flatten(1).abs().amax(dim=1) > 1e-2).all()


def _pipeline_batch(seed: int = 3):
    """``attack_batch`` of SmoothGrad on three tiny-model images, as ``adv2 attack`` runs a
    unit; returns its outputs, the images, targets and names."""
    model = make_tiny_model(0)
    images = make_images(3, seed=2)
    with torch.no_grad():
        labels = model(to_tensor(images)).argmax(dim=1)
    targets = choose_targets(labels, N_CLASSES, seed=1, fixed=None)
    names = ["a.png", "sub/b.png", "c.png"]
    cfg = pipeline.AttackConfig(model="tiny", interpreter="smoothgrad", steps=4, warm_steps=10,
                                eps=16 / 255, seed=seed,
                                interpreter_settings={"samples": 6, "attack_samples": 2,
                                                      "verify_every": 2})
    interp = build_interpreter("smoothgrad", model, **cfg.interpreter_settings)
    attack = pipeline.build_attack(cfg, model, interp)
    out = pipeline.attack_batch(cfg, model, interp, attack, images, labels, targets, names, None)
    return out, images, labels, targets, names, cfg


def test_attack_batch_seeds_and_rejudges_smoothgrad() -> None:
    out, images, labels, targets, names, cfg = _pipeline_batch()
    keys = [sample_key(n) for n in names]
    attack_seeds = interpreter_seeds(cfg.seed, keys)
    judge_seeds = interpreter_seeds(cfg.seed, keys, judge=True)
    assert len(set(attack_seeds) | set(judge_seeds)) == 6
    adv = np.stack([o.adv for o in out])
    for j, o in enumerate(out):
        assert o.seeds.attack == attack_seeds[j]
        assert o.seeds.judge == judge_seeds[j] != attack_seeds[j]
    # the reported maps are the judge's: the interpreter's maps under the judge seeds
    judge = SmoothGrad(make_tiny_model(0), **cfg.interpreter_settings)
    judge.use_seeds([o.seeds.judge for o in out])
    maps = judge(to_tensor(adv), targets)
    benign = judge(to_tensor(images), labels)
    for j, o in enumerate(out):
        np.testing.assert_allclose(o.map, maps[j, 0].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(o.benign, benign[j, 0].numpy(), atol=1e-6, rtol=0)
        # judged against the redrawn benign map
        assert o.l1 == pytest.approx(float(metrics.l1(maps[j:j + 1], benign[j:j + 1])),
                                           abs=1e-6)
    # ... not the attack's draws, which made the target map the attack had (recorded)
    judge.use_seeds(attack_seeds)
    assert (judge(to_tensor(adv), targets) - maps).abs().amax() > 1e-2
    attacked = judge(to_tensor(images), labels)
    for j, o in enumerate(out):
        np.testing.assert_allclose(o.target_map, attacked[j, 0].numpy(), atol=1e-6, rtol=0)
        assert np.abs(o.target_map - o.benign).max() > 1e-2
    # a rerun records the same
    again = _pipeline_batch()[0]
    for (arrays, meta), (arrays2, meta2) in (
            (o.to_record(), o2.to_record()) for o, o2 in zip(out, again)):
        assert meta == meta2
        assert arrays.keys() == arrays2.keys()
        assert all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    # another run seed, other seeds
    assert _pipeline_batch(seed=4)[0][0].seeds.judge != out[0].seeds.judge


def test_attack_batch_with_other_target_maps_and_a_stochastic_interpreter() -> None:
    """An 'other' target map is the pool image's map drawn with the attacked image's seed."""
    model = make_tiny_model(0)
    images = make_images(4, seed=0)
    x = to_tensor(images)
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    cfg = pipeline.AttackConfig(model="tiny", interpreter="smoothgrad", target_map="other",
                                steps=2, warm_steps=2)
    interp = SmoothGrad(model, samples=4)
    attack = pipeline.build_attack(cfg, model, interp)
    out = pipeline.attack_batch(cfg, model, interp, attack, images, labels, labels.flip(0),
                                ["a.png", "b.png", "c.png", "d.png"],
                                pipeline.Pool(x, labels, labels))
    assert len(out) == 4 and all(isinstance(o, Outcome) for o in out)


# ----------------------------------------------------------- attack values and gradients


def _target(interp, x: torch.Tensor) -> torch.Tensor:
    h, w = interp.resolution(x.shape[-2], x.shape[-1])
    return torch.rand(len(x), 1, h, w, generator=torch.Generator().manual_seed(2))


def map_term_gradient(interp, x: torch.Tensor, classes: torch.Tensor, target: torch.Tensor,
                      progress: float = 0.5, through_loss: bool = False) -> torch.Tensor:
    """∂/∂x of the map term alone (the logits unused) at the first step of an attack: the MSE
    of :meth:`attack_forward`'s maps to ``target``, or :meth:`attack_loss` (its estimator)."""
    xg = x.clone().requires_grad_(True)
    interp.start_attack(xg, classes, clean=x)
    if through_loss:
        _, dist = interp.attack_loss(xg, classes, target, MapMSE(), progress)
    else:
        _, maps = interp.attack_forward(xg, classes, progress)
        dist = MapMSE()(maps, target)
    (g,) = torch.autograd.grad(dist.sum(), xg)
    return g


NEW = {
    "ig": lambda m: IG(m, steps=8, attack_steps=3),
    "ig-blur-halves": lambda m: IG(m, steps=8, baseline="blur", attack_steps=4,
                                   estimator="halves"),
    "ig-uniform-surrogate-values": lambda m: IG(m, steps=8, baseline="uniform", attack_steps=2,
                                                attack_exact=False),
    "smoothgrad": lambda m: SmoothGrad(m, samples=8, attack_samples=4),
    "smoothgrad-halves": lambda m: SmoothGrad(m, samples=8, attack_samples=4,
                                              estimator="halves"),
    "smoothgrad-independent-halves": lambda m: SmoothGrad(m, samples=8, attack_samples=3,
                                                          antithetic=False, estimator="halves"),
    "ig-control": lambda m: IG(m, steps=8, attack_steps=3, estimator="control"),
    "smoothgrad-control": lambda m: SmoothGrad(m, samples=8, attack_samples=4,
                                               estimator="control"),
    "smoothgrad-exact-control": lambda m: SmoothGrad(m, samples=8, attack_samples=2,
                                                     attack_exact=True, estimator="control"),
    "gradcam": lambda m: GradCAM(m),
    "gradcam-inner": lambda m: GradCAM(m, layer="body.0"),
}


@pytest.mark.parametrize("name", list(NEW))
def test_the_map_term_alone_has_a_finite_nonzero_gradient(name, tiny_model, x,
                                                           classes) -> None:
    interp = NEW[name](tiny_model)
    if interp.stochastic:
        interp.use_seeds(range(len(x)))
    target = _target(interp, x)
    for through_loss in (False, True):
        for progress in (0.0, 1.0):
            g = map_term_gradient(interp, x, classes, target, progress, through_loss)
            assert torch.isfinite(g).all()
            assert (g.flatten(1).abs().sum(dim=1) > 0).all()  # every image its own


@pytest.mark.parametrize("name", ["ig-control", "smoothgrad-control",
                                  "smoothgrad-exact-control"])
def test_the_control_estimate_is_the_true_map_at_the_clean_image(name, tiny_model, x) -> None:
    """At the clean images the controlled estimate is the exact map of the attack's classes
    whatever the step's points (the draws cancel), while far from them it is not; the clean
    average costs one explain per image and each step the control's points."""
    interp = NEW[name](tiny_model)
    interp.use_seeds(range(len(x)))
    with torch.no_grad():
        predicted = tiny_model(x).argmax(dim=1)
    exact = interp(x, predicted)
    assert interp.start_attack(x, predicted, clean=x) == interp.explain_passes
    for _ in range(3):  # three steps: three sets of points
        _, maps = interp.attack_forward(x.clone().requires_grad_(True), predicted, 0.5)
        assert torch.allclose(maps, exact, atol=1e-5)
    rows = torch.tensor([2, 0])
    _, maps = interp.attack_forward(x[rows], predicted[rows], 0.5, rows)
    assert torch.allclose(maps, exact[rows], atol=1e-5)
    far = (1 - x).clamp(0, 1)
    _, maps = interp.attack_forward(far, predicted, 0.5)
    assert not torch.allclose(maps, exact, atol=1e-2)
    plain = NEW[name.replace("-control", "").replace("smoothgrad-exact", "smoothgrad")](
        tiny_model)
    assert interp.passes_per_step > plain.passes_per_step
    with pytest.raises(ValueError, match="clean images"):
        interp.start_attack(x, predicted)


def test_gradcam_inner_gradient_comes_through_the_surrogate_weights(tiny_model, x, classes,
                                                                    monkeypatch) -> None:
    """α_k = mean ∂f/∂A_k is piecewise constant in x for the ReLU model, so the true Grad-CAM's
    gradient has only the activations' path; at an inner layer the surrogate's α adds the
    weights' path, at the last feature map (α the linear head's row) there is none."""
    real = gradcam_module.grad_cam

    def weights_detached(acts, grads, relu):
        return real(acts, grads.detach(), relu)

    def true_gradient(interp, target):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(MapMSE()(interp(xg, classes), target).sum(), xg)
        return g

    for layer in ("body.0", "body"):
        interp = GradCAM(tiny_model, layer=layer)
        target = _target(interp, x)
        full, true = map_term_gradient(interp, x, classes, target), true_gradient(interp, target)
        assert (true.flatten(1).norm(dim=1) > 0).all()
        with monkeypatch.context() as patch:
            patch.setattr(gradcam_module, "grad_cam", weights_detached)
            detached = map_term_gradient(interp, x, classes, target)
            # the true model's weights carry no gradient
            torch.testing.assert_close(true_gradient(interp, target), true, atol=1e-7, rtol=1e-5)
        weights_path = (full - detached).flatten(1).norm(dim=1) / full.flatten(1).norm(dim=1)
        if layer == "body.0":
            assert (weights_path > 0.05).all(), weights_path
        else:
            assert (weights_path < 1e-5).all(), weights_path


@pytest.mark.parametrize("layer", ["body", "body.0"])
def test_gradcam_attack_values_are_the_true_maps(layer, tiny_model, x, classes) -> None:
    interp = GradCAM(tiny_model, layer=layer, beta_start=2.0, beta_end=50.0)
    assert interp.verification() is None  # every step judged for free
    logits, maps = interp.explain(x, classes)
    for progress in (0.0, 0.5, 1.0):
        a_logits, a_maps = interp.attack_forward(x.clone().requires_grad_(True), classes,
                                                 progress)
        assert torch.equal(a_maps.detach(), maps)
        assert torch.equal(a_logits.detach(), logits)


def reference_estimate(model: Classifier, interp, x: torch.Tensor, classes: torch.Tensor,
                       call: int) -> torch.Tensor:
    """The map of the attack's ``call``-th estimate from its points, by plain autograd on the
    model: the mean of ∇f(z)[c] (|·| for SmoothGrad) over the points, IG's times x − b."""
    seeds = interp.image_seeds(len(x))
    with torch.no_grad():
        pts, weights = interp.attack_points(x, seeds, call)
    grads = []
    for z in pts:  # one point of every image at a time
        z = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(z).gather(1, classes[:, None]).sum(), z)
        grads.append(g.abs() if isinstance(interp, SmoothGrad) else g)
    assert torch.allclose(weights, torch.full_like(weights, 1 / len(weights)))
    mean = torch.stack(grads).mean(0)
    if isinstance(interp, IG):
        mean = mean * (x - interp.baselines(x, seeds))
    return gradient_map(mean, interp.pool)


@pytest.mark.parametrize("kind", ["ig", "ig-blur", "smoothgrad"])
def test_exact_attack_values_are_the_estimate_at_the_steps_points(kind, tiny_model, x,
                                                                   classes) -> None:
    interp = {"ig": IG(tiny_model, attack_steps=3, attack_exact=True),
              "ig-blur": IG(tiny_model, baseline="blur", attack_steps=2, attack_exact=True),
              "smoothgrad": SmoothGrad(tiny_model, attack_samples=4, attack_exact=True)}[kind]
    interp.use_seeds([3, 1, 4, 1, 5, 9])
    xg = x.clone().requires_grad_(True)
    interp.start_attack(xg, classes)
    previous = None
    for call in range(3):
        logits, maps = interp.attack_forward(xg, classes, 0.5)
        torch.testing.assert_close(maps.detach(), reference_estimate(tiny_model, interp, x,
                                                                     classes, call),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(logits.detach(), tiny_model(x))
        if previous is not None:  # fresh points every step
            assert (maps.detach() - previous).abs().amax() > 1e-3
        previous = maps.detach()
    assert interp.verification() == Verification(interp.verify_every)


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_ig_first_attack_step_is_the_midpoint_rule(baseline, tiny_model, x, classes) -> None:
    interp = IG(tiny_model, baseline=baseline, attack_steps=4, attack_exact=True)
    interp.start_attack(x, classes)
    _, maps = interp.attack_forward(x.clone().requires_grad_(True), classes, 0.0)
    midpoints = IG(tiny_model, steps=4, method="riemann_middle", baseline=baseline)
    torch.testing.assert_close(maps.detach(), midpoints(x, classes), atol=1e-5, rtol=0)
    # start_attack starts the sequence of points again
    interp.start_attack(x, classes)
    _, again = interp.attack_forward(x.clone().requires_grad_(True), classes, 0.0)
    assert torch.equal(again.detach(), maps.detach())


def test_surrogate_attack_values_are_close_to_the_exact_ones(tiny_model, x, classes) -> None:
    for exact, approx in ((IG(tiny_model, attack_steps=3, attack_exact=True),
                           IG(tiny_model, attack_steps=3, attack_exact=False)),
                          (SmoothGrad(tiny_model, attack_samples=2, attack_exact=True),
                           SmoothGrad(tiny_model, attack_samples=2, attack_exact=False))):
        assert approx.passes_per_step == exact.passes_per_step - len(
            approx.attack_points(x[:1], [0], 0)[1])
        values = []
        for interp in (exact, approx):
            interp.start_attack(x, classes)
            values.append(interp.attack_forward(x.clone().requires_grad_(True), classes,
                                                1.0)[1].detach())
        assert torch.isfinite(values[1]).all() and values[1].min() >= 0 and values[1].max() <= 1
        gap = (values[0] - values[1]).abs().mean()
        assert 0 < gap < 0.1  # β = 60: near the true derivative, not equal


def test_halves_estimator_is_the_product_of_two_halves(tiny_model, x, classes) -> None:
    sg = SmoothGrad(tiny_model, attack_samples=4, estimator="halves")
    sg.use_seeds(range(len(x)))
    target = _target(sg, x)
    sg.start_attack(x, classes)
    _, loss = sg.attack_loss(x.clone().requires_grad_(True), classes, target, MapMSE(), 0.5)
    sg.start_attack(x, classes)
    _, (a, b) = sg.attack_maps(x.clone().requires_grad_(True), classes, 0.5, None, 2)
    torch.testing.assert_close(loss, ((a - target) * (b - target)).flatten(1).mean(1))
    assert (a - b).abs().amax() > 1e-3  # two different estimates
    # the halves hold whole antithetic pairs ε, −ε
    pts, _ = sg.attack_points(x, sg.image_seeds(len(x)), 0)
    torch.testing.assert_close(pts[0] - x, -(pts[1] - x))
    torch.testing.assert_close(pts[2] - x, -(pts[3] - x))
    assert (pts[0] - pts[2]).abs().amax() > 0.1


def test_smoothgrad_attack_draws_are_per_image_and_per_step(tiny_model, x) -> None:
    sg = SmoothGrad(tiny_model, attack_samples=2, antithetic=False)
    seeds = [3, 1, 4, 1, 5, 9]
    pts, _ = sg.attack_points(x, seeds, 0)
    alone, _ = sg.attack_points(x[2:3], [4], 0)
    assert torch.equal(alone[:, 0], pts[:, 2])
    torch.testing.assert_close(pts[:, 1] - x[1], pts[:, 3] - x[3], atol=1e-6, rtol=0)  # seed 1
    later, _ = sg.attack_points(x, seeds, 1)
    assert (later - pts).abs().amax() > 0.1
    assert (pts - x).std() == pytest.approx(sg.sigma, rel=0.05)


def test_passes_per_step_and_per_explanation(tiny_model) -> None:
    # 3 × (true + sur) + 1
    assert IG(tiny_model, steps=10, attack_steps=3, attack_exact=True).passes_per_step == 7
    assert IG(tiny_model, attack_steps=3, attack_exact=False).passes_per_step == 4
    assert IG(tiny_model, steps=10).explain_passes == 11
    assert SmoothGrad(tiny_model, samples=6, attack_samples=4,
                      attack_exact=True).passes_per_step == 9
    assert SmoothGrad(tiny_model, samples=6).explain_passes == 7
    assert GradCAM(tiny_model).passes_per_step == 2 and GradCAM(tiny_model).explain_passes == 1
    assert IG(tiny_model, method="gausslegendre", steps=7).config()["method"] == "gausslegendre"
    assert GradCAM(tiny_model, layer="body.0").config()["layer"] == "body.0"


# ------------------------------------------------------------------------- ADV² end to end


class _Spy:
    """Counts the engine's judgements (``explain_rows`` with rows) per image."""

    def __init__(self, interp, n: int) -> None:
        self.real = interp.explain_rows
        self.counts = torch.zeros(n, dtype=torch.long)

    def __call__(self, x, classes, rows):
        if rows is not None:
            assert len(rows) == len(x) == len(classes)
            self.counts[rows] += 1
        return self.real(x, classes, rows)


@pytest.mark.parametrize("name", ["ig", "smoothgrad", "gradcam", "gradcam-inner"])
def test_adv2_end_to_end(name, tiny_model, monkeypatch) -> None:
    images = make_images(4, seed=0)
    x0 = to_tensor(images)
    with torch.no_grad():
        labels = tiny_model(x0).argmax(dim=1)
    targets = choose_targets(labels, N_CLASSES, seed=0, fixed=None)
    interp = {"ig": IG(tiny_model, steps=8, attack_steps=2, verify_every=4),
              "smoothgrad": SmoothGrad(tiny_model, samples=8, attack_samples=2, verify_every=4),
              "gradcam": GradCAM(tiny_model),
              "gradcam-inner": GradCAM(tiny_model, layer="body.0")}[name]
    if interp.stochastic:
        interp.use_seeds([10, 11, 12, 13])
    benign = target_maps.benign(interp, x0, labels)
    eps, steps, warm = 16 / 255, 10, 30
    # the step settings pinned (not the interpreter's tuned defaults), no early stop
    attack = ADV2.for_interpreter(tiny_model, interp, steps=steps, warm_steps=warm, patience=0,
                                  eps=eps, optimizer="adam", lr=0.004, lr_decay=0.05, lam="20",
                                  pred_loss="cw")
    spy = _Spy(interp, len(images))
    monkeypatch.setattr(interp, "explain_rows", spy)
    result = attack(images, targets, benign)
    assert result.success.all()
    assert result.adv.dtype == np.uint8
    assert (np.abs(result.adv.astype(int) - images.astype(int)) <= 16).all()
    assert ((result.x - x0).abs() <= eps + 1e-6).all()
    torch.testing.assert_close(result.x * 255, (result.x * 255).round(), atol=1e-4, rtol=0)
    # the reported maps are the true interpreter's of the returned images
    logits, maps = interp.explain(to_tensor(result.adv), targets)
    torch.testing.assert_close(result.maps, maps, atol=1e-6, rtol=0)
    assert torch.equal(result.pred, logits.argmax(dim=1))
    # the map term did something: closer to the benign maps than PGD's
    pgd = PGD(tiny_model, interp, eps=eps, steps=warm)(images, targets, benign)
    assert result.l1.mean() < pgd.l1.mean()
    # passes: the warm start's, each joint step's, each judgement's
    warm_passes = PGD(tiny_model, eps=eps, steps=warm, stop_on_success=True,
                      min_confidence=attack.warm_confidence, loss=attack.pred_loss).run(
        x0, targets).passes
    judged = spy.counts
    if interp.verification() is None:
        assert (judged == 1).all()  # the last step's judgement only
    else:  # steps 0, 4, 8 and the last at least, and on regained success
        assert (judged >= 4).all()
    expected = warm_passes + steps * interp.passes_per_step + judged * interp.explain_passes
    assert torch.equal(result.passes, expected)
    assert (result.passes > steps).all()


# ------------------------------------------------------------------------------- errors


def test_ig_rejects_unknown_settings(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"unknown IG method 'simpson'; choose from .*riemann"):
        IG(tiny_model, method="simpson")
    with pytest.raises(ValueError, match=r"unknown IG baseline 'gray'; choose from .*blur"):
        IG(tiny_model, baseline="gray")
    with pytest.raises(ValueError, match="at least 2 steps"):
        IG(tiny_model, steps=1, method="riemann_trapezoid")
    assert IG(tiny_model, steps=1, method="gausslegendre").steps == 1
    with pytest.raises(ValueError, match="attack_steps must be ≥ 1"):
        IG(tiny_model, attack_steps=0)
    with pytest.raises(ValueError, match="attack_steps must be ≥ 2"):
        IG(tiny_model, attack_steps=1, estimator="halves")
    with pytest.raises(ValueError,
                       match=r"estimator must be one of \('mean', 'halves', 'control'\)"):
        IG(tiny_model, estimator="median")
    with pytest.raises(ValueError, match="internal_batch_size must be ≥ 1 or None"):
        IG(tiny_model, internal_batch_size=0)
    with pytest.raises(ValueError, match="verify_every must be ≥ 1"):
        IG(tiny_model, verify_every=0)
    with pytest.raises(ValueError, match="interpreter 'ig'.*n_steps"):
        build_interpreter("ig", tiny_model, n_steps=5)


def test_smoothgrad_rejects_bad_draw_counts(tiny_model) -> None:
    with pytest.raises(ValueError, match="antithetic draws come in pairs: attack_samples must "
                                         "be even, got 3"):
        SmoothGrad(tiny_model, attack_samples=3)
    assert SmoothGrad(tiny_model, attack_samples=3, antithetic=False).attack_samples == 3
    with pytest.raises(ValueError, match="samples and attack_samples must be ≥ 1"):
        SmoothGrad(tiny_model, samples=0)
    with pytest.raises(ValueError, match="attack_samples must be ≥ 2"):
        SmoothGrad(tiny_model, attack_samples=1, antithetic=False, estimator="halves")


def test_gradcam_rejects_unknown_or_unused_layers(tiny_model, x, classes) -> None:
    with pytest.raises(ValueError, match=r"no layer '0' in the model; similar names: body\.0"):
        GradCAM(tiny_model, layer="0")
    with pytest.raises(ValueError, match=r"no layer 'linear'.*similar names: head\.linear"):
        GradCAM(tiny_model, layer="linear")  # the head's, named once
    with pytest.raises(ValueError, match=r"no layer 'conv'.*named_modules\(\), e\.g\. 'body'"):
        GradCAM(tiny_model, layer="conv")
    tiny_model.spare = nn.Conv2d(3, 3, 1)  # a module the forward pass never calls
    with pytest.raises(ValueError, match="not used by the model's forward pass"):
        GradCAM(tiny_model, layer="spare")(x, classes)


def _tanh_model() -> Classifier:
    torch.manual_seed(0)
    linear = nn.Linear(8, N_CLASSES)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Tanh())
    return Classifier(features, PoolLinear(linear), linear, name="tanh-tiny")


@pytest.mark.parametrize("make", [lambda m: IG(m, steps=4), lambda m: SmoothGrad(m, samples=4),
                                  lambda m: GradCAM(m, layer="body.0")],
                         ids=["ig", "smoothgrad", "gradcam"])
def test_attack_on_unsupported_layers_is_a_clear_error(make, x) -> None:
    model = _tanh_model()
    interp = make(model)
    classes = torch.zeros(len(x), dtype=torch.long)
    maps = interp(x, classes)  # explaining needs no surrogate
    assert maps.shape[0] == len(x) and torch.isfinite(maps).all()
    message = r"ADV² needs the fast ReLU surrogate.*body\.1 \(Tanh\)"
    with pytest.raises(ValueError, match=message):
        interp.attack_forward(x.clone().requires_grad_(True), classes, 0.5)
    with pytest.raises(ValueError, match=message):
        ADV2(model, interp, steps=2, warm_steps=1)(x, (classes + 1) % N_CLASSES)


@pytest.mark.slow
def test_gradcam_names_lite0_stages(lite0) -> None:
    with pytest.raises(ValueError, match=r"similar names: body\.inner\.blocks\.4"):
        GradCAM(lite0[0], layer="blocks.4")


def test_each_half_of_the_halves_estimator_estimates_the_whole_map() -> None:
    """IG's halves are two rules along the whole path (the even and the odd points), and
    SmoothGrad's keep antithetic pairs whole, so each half estimates the same expected map."""
    model = make_tiny_model()
    x = torch.full((1, 3, 8, 8), 0.5)
    ig = IG(model, attack_steps=4, estimator="halves")
    points, _ = ig.attack_points(x, [0], 0)
    alphas = (points[:, 0, 0, 0, 0] / 0.5).tolist()  # the black baseline: a point is α·x
    first, second = sorted(alphas[:2]), sorted(alphas[2:])
    assert first[0] < 0.5 < first[1] and second[0] < 0.5 < second[1]
    with pytest.raises(ValueError, match="attack_steps must be ≥ 2 and even"):
        IG(model, attack_steps=3, estimator="halves")
    with pytest.raises(ValueError, match="multiple of 4"):
        SmoothGrad(model, attack_samples=6, estimator="halves")
    SmoothGrad(model, attack_samples=6)  # the mean estimator takes any whole pairs


def test_gradcam_attacks_at_a_convolution_that_a_batch_norm_follows() -> None:
    """The attack's surrogate fuses a frozen convolution with the batch norm after it; at a
    hooked convolution it must not, or no gradient reaches the layer's activations."""
    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                   torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                   torch.nn.BatchNorm2d(16), torch.nn.ReLU6())
    linear = torch.nn.Linear(16, 10)
    model = Classifier(features=features, head=PoolLinear(linear), linear=linear,
                       name="conv-bn").eval()
    gradcam = GradCAM(model, layer="body.3")
    x = to_tensor(make_images(2, seed=5)).requires_grad_(True)
    classes = torch.tensor([1, 2])
    logits, maps = gradcam.attack_forward(x, classes, 0.5)
    assert torch.allclose(maps, gradcam(x.detach(), classes), atol=1e-5)  # the true maps
    (grad,) = torch.autograd.grad(maps.sum(), x)
    assert grad.abs().sum() > 0
