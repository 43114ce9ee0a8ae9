"""Feature squeezers, the feature-squeezing detector and the adaptive ADV² hooks (tiny models)."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import scipy.ndimage
import torch

from adv2 import pipeline
from adv2 import target_maps
from adv2.attacks import (ADV2, AdaptiveADV2, Constant, CrossEntropy, Descent, Linear, MapMSE,
                          Objective, Scaled, SignStep, Stop, TargetPredicted)
from adv2.attacks.adaptive import ProbabilityMatch, SqueezeGuard, Undetected
from adv2.attacks.step_search import MarginStepSearch
from adv2.data import to_tensor
from adv2.detection import (BitDepth, FeatureSqueezingDetector, MedianSmoothing, NonLocalMeans,
                            NotFittedError, build_squeezer, cross_validated_flags, nlm_uint8,
                            threshold_at_fpr)
from adv2.interpreters import CAM
from adv2.target_classes import choose_targets
from conftest import N_CLASSES, make_images

# ------------------------------------------------------------------------------------ squeezers


def test_bit_depth_levels_on_hand_made_image() -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255
    x = levels.view(1, 1, 1, -1).expand(1, 3, 1, 256)
    one = BitDepth(1)(x)
    assert set((one * 255).round().unique().tolist()) == {0.0, 255.0}
    assert torch.equal(one[0, 0, 0, :128], torch.zeros(128))  # 127/255 < 0.5 rounds down
    assert torch.equal(one[0, 0, 0, 128:], torch.ones(128))
    for bits in range(1, 6):
        out = BitDepth(bits)(x)
        expected = (torch.round(torch.round(levels * (2**bits - 1)) / (2**bits - 1) * 255) / 255)
        torch.testing.assert_close(out[0, 0, 0], expected, rtol=0, atol=0)
        assert len(out.unique()) == 2**bits  # exactly 2^b levels over the full range
        assert torch.equal(quantised := (out * 255).round() / 255, out), quantised  # uint8 lattice


def test_bit_depth_is_straight_through() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    (BitDepth(3)(x) * torch.arange(96.0).view(2, 3, 4, 4)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(96.0).view(2, 3, 4, 4))


def test_median_of_known_patch() -> None:
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0] = torch.tensor([[9.0, 1.0, 5.0], [3.0, 7.0, 2.0], [8.0, 4.0, 6.0]]) / 255
    centre = MedianSmoothing(3)(x.expand(1, 3, 3, 3))[0, :, 1, 1]
    torch.testing.assert_close(centre, torch.full((3,), 5.0 / 255))
    # 2×2 window of pixel (1,1) spans rows/cols 0..1: {9,1,3,7} → upper median 7
    torch.testing.assert_close(MedianSmoothing(2)(x)[0, 0, 1, 1], torch.tensor(7.0 / 255))


@pytest.mark.parametrize("size", [2, 3])
def test_median_matches_scipy_reflect(size: int) -> None:
    x = to_tensor(make_images(2, seed=3, size=13)[:, :, :11])
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_array_equal(MedianSmoothing(size)(x).numpy(), expected)


def test_median_gradient_flows_to_selected_element() -> None:
    values = torch.tensor([[9.0, 1.0, 5.0], [3.0, 7.0, 2.0], [8.0, 4.0, 6.0]])
    x = values.view(1, 1, 3, 3).clone().requires_grad_(True)
    MedianSmoothing(3)(x)[0, 0, 1, 1].backward()
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 0, 2] = 1.0  # the 5 is the median of the centre window
    torch.testing.assert_close(x.grad, expected)
    # the whole map: each output's gradient goes to one input element, so they sum to H·W
    y = torch.rand(1, 2, 6, 5, requires_grad=True)
    MedianSmoothing(2)(y).sum().backward()
    assert y.grad.sum().item() == pytest.approx(2 * 6 * 5)
    assert set(y.grad.unique().tolist()) <= set(range(6))


def test_nlm_returns_uint8_of_same_shape_and_denoises() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((2, 24, 20, 3), 120, dtype=np.uint8)
    noisy = np.clip(flat + rng.normal(0, 4, flat.shape), 0, 255).astype(np.uint8)
    out = nlm_uint8(noisy, search=11, patch=3, strength=4)
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    assert np.abs(out.astype(int) - 120).mean() < np.abs(noisy.astype(int) - 120).mean()


def test_nlm_module_is_bpda() -> None:
    x = to_tensor(make_images(1, seed=2)).requires_grad_(True)
    squeezer = NonLocalMeans(11, 3, 4)
    y = squeezer(x)
    np.testing.assert_array_equal((y.detach() * 255).round().to(torch.uint8)
                                  .permute(0, 2, 3, 1).numpy(),
                                  nlm_uint8((x.detach() * 255).round().to(torch.uint8)
                                            .permute(0, 2, 3, 1).numpy(), 11, 3, 4))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_build_squeezer_names() -> None:
    assert build_squeezer("bit-4").bits == 4
    assert build_squeezer("median-2x2").size == 2
    nlm = build_squeezer("nlm-13-3-2")
    assert (nlm.search, nlm.patch, nlm.strength, nlm.name) == (13, 3, 2.0, "nlm-13-3-2")
    for bad in ("bit-9", "median-2x3", "nlm-11-3", "blur-3"):
        with pytest.raises(ValueError):
            build_squeezer(bad)


# ------------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.2])
def test_threshold_hits_requested_fpr(fpr: float) -> None:
    gen = torch.Generator().manual_seed(0)
    benign = torch.rand(1000, generator=gen) ** 2
    threshold = threshold_at_fpr(benign, fpr)
    assert (benign > threshold).sum().item() == round(fpr * 1000)
    # the population's rate above the threshold, P(u² > t) = 1 − √t, is fpr within 3 standard
    # errors of a quantile estimated from 1000 samples
    assert 1 - threshold**0.5 == pytest.approx(fpr, abs=3 * (fpr * (1 - fpr) / 1000) ** 0.5)
    # never more than ⌊fpr·n⌋ flagged, even for sizes where fpr·n is not an integer
    for n in (7, 33, 101):
        scores = torch.rand(n, generator=gen)
        assert (scores > threshold_at_fpr(scores, fpr)).sum() <= int(fpr * n)


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        threshold_at_fpr(torch.rand(10), 1.0)
    with pytest.raises(ValueError):
        threshold_at_fpr(torch.zeros(0), 0.05)


def test_cross_validated_flags_are_held_out_and_hit_the_rate() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(2000, 2, generator=gen)
    flags = cross_validated_flags(scores, 0.05, folds=10, seed=3)
    # held-out rate of thresholds fitted on 1800 samples: 5% within 3 standard errors
    assert flags.float().mean(dim=0).sub(0.05).abs().max() < 3 * (0.05 * 0.95 / 2000) ** 0.5
    assert torch.equal(flags, cross_validated_flags(scores, 0.05, folds=10, seed=3))
    # leave-one-out on 0, 1, ..., 19 at fpr 0.1: the threshold without image i is the 18th of
    # the other 19, so exactly the two largest scores are flagged
    loo = cross_validated_flags(torch.arange(20.0)[:, None], 0.1, folds=20, seed=0)
    assert loo[:, 0].nonzero().flatten().tolist() == [18, 19]
    with pytest.raises(ValueError):
        cross_validated_flags(scores[:5], 0.05, folds=10)


def _fitted(model, n: int = 20, seed: int = 10) -> FeatureSqueezingDetector:
    return FeatureSqueezingDetector(model, ["bit-2", "median-2x2", "nlm-11-3-4"]).fit(
        make_images(n, seed=seed), fpr=0.1)


def test_detector_fit_and_detect(tiny_model) -> None:
    benign = make_images(20, seed=10)
    detector = _fitted(tiny_model)
    report = detector.detect(benign)
    assert report.scores.shape == (20, 3) and report.flags.shape == (20, 3)
    assert ((report.scores >= 0) & (report.scores <= 2 + 1e-6)).all()
    torch.testing.assert_close(report.joint, report.scores.amax(dim=1))
    assert report.flags.sum(dim=0).tolist() == [2, 2, 2]  # 10% of 20 on the fitted images
    assert report.joint_flag.sum().item() == 2
    # the score is the L1 distance of the softmax vectors of x and ψ(x), computed by hand
    x = to_tensor(benign[:3])
    with torch.no_grad():
        p = tiny_model(x).softmax(1)
        q = tiny_model(BitDepth(2)(x)).softmax(1)
    torch.testing.assert_close(report.scores[:3, 0], (p - q).abs().sum(1))
    # float tensors and uint8 arrays give the same scores
    torch.testing.assert_close(detector.scores(x), report.scores[:3])


def test_unfitted_detector_raises(tiny_model) -> None:
    detector = FeatureSqueezingDetector(tiny_model, ["bit-3"])
    with pytest.raises(NotFittedError, match="not fitted"):
        detector.detect(make_images(2))
    with pytest.raises(NotFittedError):
        detector.save("unused.json")
    with pytest.raises(NotFittedError):
        SqueezeGuard(detector)


def test_detector_save_load_round_trip(tiny_model, tmp_path) -> None:
    detector = _fitted(tiny_model)
    path = tmp_path / "thresholds.json"
    detector.save(path)
    loaded = FeatureSqueezingDetector.load(tiny_model, path)
    assert loaded.names == detector.names and loaded.fpr == detector.fpr
    torch.testing.assert_close(loaded.thresholds, detector.thresholds)
    assert loaded.joint_threshold == detector.joint_threshold
    images = make_images(5, seed=4)
    assert torch.equal(loaded.detect(images).flags, detector.detect(images).flags)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read detector thresholds"):
        FeatureSqueezingDetector.load(tiny_model, path)


# ------------------------------------------------------------------------------ adaptive ADV²


def test_guard_penalty_is_hinge_plus_cross_entropy(tiny_model) -> None:
    detector = _fitted(tiny_model)
    guard = SqueezeGuard(detector, margin=0.5, weight=2.0, ce_weight=0.5)
    x = to_tensor(make_images(6, seed=5)).requires_grad_(True)
    logits = tiny_model(x)
    penalty = guard.penalty(x, logits, torch.arange(6))
    with torch.no_grad():
        scores = detector.score_logits(x)
        limits = 0.5 * detector.thresholds
        expected = torch.zeros(6)
        for j, squeezer in enumerate(detector.squeezers):
            q = tiny_model(squeezer(x)).log_softmax(1)
            cross = -(logits.softmax(1) * q).sum(1)
            on = scores[:, j] > limits[j]
            expected += torch.where(on, 2.0 * (scores[:, j] - limits[j]) + 0.5 * cross, 0.0)
    torch.testing.assert_close(penalty.detach(), expected)
    penalty.sum().backward()
    assert x.grad.abs().sum() > 0
    accepted = guard.accept(x.detach(), logits.detach(), torch.arange(6))
    torch.testing.assert_close(accepted, (scores <= 0.98 * detector.thresholds).all(1))


def test_guard_scores_each_iterate_once(tiny_model, monkeypatch) -> None:
    detector = _fitted(tiny_model)
    guard = SqueezeGuard(detector)
    calls = []
    score_logits = detector.score_logits
    monkeypatch.setattr(detector, "score_logits",
                        lambda x, *a: calls.append(len(x)) or score_logits(x, *a))
    x = to_tensor(make_images(6, seed=5))
    rows = torch.tensor([3, 4, 5, 6, 7, 8])
    logits = tiny_model(x)
    full = guard.scores(x, logits, rows)
    some = torch.tensor([4, 1])  # positions of rows 7 and 4: a subset, in another order
    torch.testing.assert_close(guard.scores(x[some], logits[some], rows[some]), full[some])
    assert calls == [6]
    guard.scores(x[some] + 1 / 255, logits[some], rows[some])  # other iterates: scored again
    guard.scores(x[:2], logits[:2], torch.tensor([0, 1]))  # rows it has not seen: likewise
    assert calls == [6, 2, 2]


def test_probability_match_penalty() -> None:
    reference = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    logits = torch.tensor([[0.0, 0.0]])
    out = ProbabilityMatch(reference, weight=3.0)(torch.zeros(1), logits, torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([0.0]))
    out = ProbabilityMatch(reference, weight=3.0)(torch.zeros(1), logits, torch.tensor([0]))
    torch.testing.assert_close(out, torch.tensor([3.0]))


def test_scaled_schedule() -> None:
    scaled = Scaled(Linear(5.0, 10.0), 4.0)
    assert (scaled(0.0), scaled(0.5), scaled(1.0)) == (20.0, 30.0, 40.0)


def _setup(model, n: int = 4):
    images = make_images(n, seed=6)
    x = to_tensor(images)
    with torch.no_grad():
        labels = model(x).argmax(1)
    targets = choose_targets(labels, N_CLASSES, seed=0, fixed=None)
    cam = CAM(model)
    return images, targets, cam, target_maps.benign(cam, x, labels)


def test_accept_hook_keeps_only_undetected_iterates(tiny_model) -> None:
    detector = _fitted(tiny_model)
    images, targets, cam, maps = _setup(tiny_model)
    x0 = to_tensor(images)
    guard = SqueezeGuard(detector)

    def run(**hooks):
        objective = Objective(CrossEntropy(), MapMSE(), Constant(5.0), **hooks)
        return Descent(tiny_model, objective, SignStep(1 / 255), 40, 24 / 255,
                       Stop(patience=10), cam).run(x0, x0, targets, maps)

    def flagged(traj):
        return detector.detect(traj.x).flags.any(dim=1)

    plain = run()
    assert (plain.found & flagged(plain)).any()  # without the hook, detected iterates are kept
    guarded = run(penalties=(guard.penalty,), criterion=TargetPredicted() & Undetected(guard))
    assert guarded.found.any()
    assert not (guarded.found & flagged(guarded)).any()
    # an acceptance test that rejects everything leaves nothing found
    never = run(criterion=lambda x, logits, t, rows: torch.zeros(len(x), dtype=torch.bool))
    assert not never.found.any()


def test_adaptive_adv2_end_to_end(tiny_model) -> None:
    detector = _fitted(tiny_model)
    images, targets, cam, maps = _setup(tiny_model)
    cfg = pipeline.AttackConfig(attack="adv2", steps=30, warm_steps=20, eps=24 / 255)
    attack = pipeline.build_attack(cfg, tiny_model, cam)
    assert isinstance(attack, ADV2)
    result = AdaptiveADV2(attack, detector)(images, targets, maps)
    assert result.adv.dtype == np.uint8 and result.adv.shape == images.shape
    assert (result.linf <= 24).all()
    assert result.iou is not None and result.success.shape == (4,)
    assert attack.penalties == () and attack.criterion == TargetPredicted()  # untouched
    # the λ multiplier defaults per interpreter; an explicit one is kept
    assert AdaptiveADV2(attack, detector).lam_scale == CAM.adaptive_lam_scale == 16.0
    assert AdaptiveADV2(attack, detector, lam_scale=2.0).lam_scale == 2.0
    # the joint stage: the guard's hooks, λ × lam_scale, its own steps, no step search
    searching = dataclasses.replace(attack, step_search=MarginStepSearch())
    joint = AdaptiveADV2(searching, detector, lam_scale=2.0, steps=9).joint((len,))
    assert joint.step_search is None and joint.penalties == (len,) and joint.steps == 9
    assert isinstance(joint.criterion.second, Undetected)
    assert joint.lam(0.5) == 2.0 * attack.lam(0.5)


def test_adaptive_config_defaults_and_overrides(tiny_model, tmp_path) -> None:
    """With ``adaptive`` set, the joint stage defaults to AdaptiveADV2's steps without early stop;
    explicit steps and patience reach it (the resolved config is what config.json records)."""
    path = tmp_path / "fs.json"
    _fitted(tiny_model).save(path)
    cam = CAM(tiny_model)
    cfg = pipeline.AttackConfig(attack="adv2", adaptive=str(path))
    assert cfg.resolved().steps == 200 and cfg.resolved().patience == 0
    default = pipeline.build_attack(cfg, tiny_model, cam)
    assert isinstance(default, AdaptiveADV2)
    assert (default.steps, default.patience) == (200, None)
    chosen = pipeline.build_attack(dataclasses.replace(cfg, steps=7, patience=3), tiny_model, cam)
    assert (chosen.steps, chosen.patience) == (7, 3)
    plain = pipeline.AttackConfig(attack="adv2").resolved()
    assert plain.steps == CAM.attack_defaults["steps"]


def test_bit_depth_two_stage_uses_squeezed_reference(tiny_model) -> None:
    detector = FeatureSqueezingDetector(tiny_model, ["bit-3"]).fit(make_images(20, seed=10), 0.1)
    images, targets, cam, maps = _setup(tiny_model)
    attack = pipeline.build_attack(pipeline.AttackConfig(attack="adv2", steps=20, warm_steps=20),
                                   tiny_model, cam)
    adaptive = AdaptiveADV2(attack, detector, stage1_steps=30)
    assert adaptive.bit_depth is not None and adaptive.bit_depth.bits == 3
    reference = adaptive.stage_one(images, targets, adaptive.bit_depth)
    assert reference.shape == (4, N_CLASSES)
    torch.testing.assert_close(reference.sum(1), torch.ones(4))
    # stage 1 makes the 3-bit squeezed image lean to the target more than the clean one does
    with torch.no_grad():
        clean = tiny_model(BitDepth(3)(to_tensor(images))).softmax(1)
    gain = reference.gather(1, targets.view(-1, 1)) - clean.gather(1, targets.view(-1, 1))
    assert (gain > 0).all()
    # stage 2's match to softmax f(x⁺) changes the attack
    two_stage = adaptive(images, targets, maps).adv
    one_stage = dataclasses.replace(adaptive, two_stage=False)(images, targets, maps).adv
    assert two_stage.shape == images.shape and not np.array_equal(two_stage, one_stage)


# ------------------------------------------------------------------------------------------ CLI


def _image_folder(tmp_path, n: int, seed: int):
    """A folder of n small generated PNG images."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(make_images(n, seed=seed, size=64)):
        Image.fromarray(image).save(folder / f"img_{i}.png")
    return folder


def test_cli_detect_fit_and_score(tmp_path, capsys) -> None:
    from adv2 import cli

    folder = _image_folder(tmp_path, 6, seed=7)
    thresholds = tmp_path / "fs.json"
    assert cli.main(["detect", "fit", "--images", str(folder), "--squeezers", "bit-3",
                     "median-2x2", "--fpr", "0.2", "--out", str(thresholds)]) == 0
    fitted = json.loads(thresholds.read_text())
    assert fitted["squeezers"] == ["bit-3", "median-2x2"] and fitted["fpr"] == 0.2
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["cross_validated_fpr"]) == {"bit-3", "median-2x2", "joint"}
    # leave-one-out over the 6 images: each rate counts flagged images out of 6
    assert all(0 <= r <= 1 and abs(6 * r - round(6 * r)) < 1e-6
               for r in printed["cross_validated_fpr"].values())
    scores = tmp_path / "scores.csv"
    assert cli.main(["detect", "score", "--images", str(folder), "--thresholds", str(thresholds),
                     "--out", str(scores)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 6
    # refitting scores on the fitting images flags at most ⌊0.2·6⌋ = 1 image per squeezer
    assert all(round(rate * 6) <= 1 for rate in summary["detection_rate"].values())
    rows = list(csv.DictReader(scores.open()))
    assert [r["file"] for r in rows] == [f"img_{i}.png" for i in range(6)]
    assert all(float(r["joint"]) == max(float(r["bit-3"]), float(r["median-2x2"])) for r in rows)
    assert cli.main(["detect", "score", "--images", str(folder), "--thresholds",
                     str(tmp_path / "missing.json")]) == 2


def test_cli_attack_adaptive(tmp_path) -> None:
    """`adv2 attack --adaptive THRESHOLDS` runs ADV² against a fitted detector and records it;
    it is refused for PGD and with an unreadable thresholds file."""
    from adv2 import cli

    folder = _image_folder(tmp_path, 2, seed=9)
    thresholds = tmp_path / "fs.json"
    assert cli.main(["detect", "fit", "--images", str(folder), "--squeezers", "median-2x2",
                     "--fpr", "0.5", "--out", str(thresholds)]) == 0
    common = ["attack", "--interpreter", "cam", "--images", str(folder), "--steps", "2",
              "--warm-steps", "2"]
    out = tmp_path / "run"
    assert cli.main([*common, "--attack", "adv2", "--adaptive", str(thresholds),
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["adaptive"] == str(thresholds)
    assert config["steps"] == 2  # --steps reaches the joint stage and is recorded
    assert json.loads((out / "summary.json").read_text())["n_images"] == 2
    assert cli.main([*common, "--attack", "pgd", "--adaptive", str(thresholds),
                     "--out", str(tmp_path / "pgd")]) == 2
    assert cli.main([*common, "--attack", "adv2", "--adaptive", str(tmp_path / "none.json"),
                     "--out", str(tmp_path / "bad")]) == 2
