"""The detector protocol and registry, the ensemble-interpretation detector, a toy detector
registered from outside adv2, and adaptive ADV² against any detector and several at once."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from adv2 import cli, pipeline
from adv2.attacks import ADV2, AdaptiveADV2
from adv2.attacks.adaptive import Undetected
from adv2.data import load_dataset, to_tensor
from adv2.detection import (DETECTORS, Detector, EnsembleDetector, EnsembleGuard,
                            FeatureSqueezingDetector, Guard, Thresholds, build_detector,
                            inconsistency, load_detector, pooled, soft_inconsistency)
from adv2.errors import SettingError
from adv2.experiment import load_config, run_experiment
from adv2.experiment.config import ConfigError
from adv2.interpreters import CAM
from conftest import N_CLASSES, make_images


class Brightness(Detector):
    """Flags images brighter than the benign ones (a toy detector from outside adv2)."""

    name = "toy"

    def __init__(self, model: torch.nn.Module | None, gain: float = 1.0,
                 batch_size: int = 32) -> None:
        super().__init__(model, batch_size)
        self.gain = gain
        self.names = ["brightness"]

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x.mean(dim=(1, 2, 3))[:, None]

    def settings(self) -> dict[str, Any]:
        return {"gain": self.gain}

    def guard(self, columns: Sequence[int] | None = None, margin: float = 0.9,
              weight: float = 3.0) -> Guard:
        return BrightnessGuard(self, columns, margin, weight)


class BrightnessGuard(Guard):
    def score(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.detector.score_batch(x)[:, self.columns]

    def penalty(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        on = self.active(x, logits, rows).any(dim=1)
        return torch.where(on, self.weight * self.detector.score_batch(x)[:, 0], 0.0)


@pytest.fixture
def toy(monkeypatch) -> type[Detector]:
    monkeypatch.setitem(DETECTORS, "toy", Brightness)
    return Brightness


def _folder(root: Path, n: int, seed: int, size: int = 64) -> Path:
    root.mkdir()
    for i, image in enumerate(make_images(n, seed=seed, size=size)):
        Image.fromarray(image).save(root / f"img_{i}.png")
    return root


def _setup(model, n: int = 4):
    images = make_images(n, seed=6)
    with torch.no_grad():
        labels = model(to_tensor(images)).argmax(1)
    return images, (labels + 1) % N_CLASSES


# ------------------------------------------------------------------------ protocol, registry


def test_registry_builds_checks_and_names_bad_settings(tiny_model) -> None:
    assert {"squeeze", "ensemble"} <= set(DETECTORS)
    assert DETECTORS["squeeze"] is FeatureSqueezingDetector
    assert EnsembleDetector.setting_defaults()["interpreters"] == ("cam", "grad")
    squeeze = build_detector("squeeze", tiny_model, {"squeezers": ["bit-3"]})
    assert squeeze.names == ["bit-3"] and not squeeze.fitted
    with pytest.raises(SettingError, match="unknown detector 'nope'") as info:
        build_detector("nope", tiny_model)
    assert info.value.key == "detector"
    with pytest.raises(SettingError, match="no setting 'squeezers'") as info:
        build_detector("ensemble", tiny_model, {"squeezers": ["bit-3"]})
    assert info.value.key == "squeezers"
    for name, settings, key in (("ensemble", {"interpreters": ["cam"]}, "interpreters"),
                                ("ensemble", {"interpreters": ["cam", "gard"]}, "interpreters"),
                                ("ensemble", {"ks": [0.0]}, "ks"),
                                ("squeeze", {"squeezers": ["blur-3"]}, "squeezers")):
        with pytest.raises(SettingError) as info:
            build_detector(name, tiny_model, settings)
        assert info.value.key == key


def test_thresholds_at_fpr_on_hand_made_scores() -> None:
    scores = torch.stack([torch.arange(20.0), torch.arange(20.0).flip(0) / 2], dim=1)
    fitted = Thresholds.fit(scores, 0.1)
    assert fitted.columns.tolist() == [17.0, 8.5] and fitted.joint == 17.0 and fitted.fpr == 0.1
    found = fitted.decide(scores)
    assert found.flags.sum(dim=0).tolist() == [2, 2]
    assert found.joint_flag.nonzero().flatten().tolist() == [18, 19]
    detector = Brightness(None).fit_scores(torch.arange(20.0)[:, None], 0.1)
    assert detector.thresholds.tolist() == [17.0] and detector.joint_threshold == 17.0
    assert detector.decide(torch.tensor([[17.0], [17.5]])).joint_flag.tolist() == [False, True]


def test_scores_that_are_not_finite_are_errors_not_values() -> None:
    with pytest.raises(ValueError, match="1 of 4 scores are not finite"):
        Thresholds.fit(torch.tensor([[0.1], [0.2], [torch.nan], [0.3]]), 0.25)
    fitted = Thresholds.fit(torch.arange(4.0)[:, None], 0.25)
    with pytest.raises(ValueError, match="not finite"):
        fitted.decide(torch.tensor([[1.0], [torch.inf]]))


class Dark(Brightness):
    """The toy detector, whose score is NaN on dark images (mean below 0.45)."""

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))[:, None]
        return torch.where(mean < 0.45, torch.nan, self.gain * mean)


def test_cli_skips_the_images_whose_scores_are_not_finite(tmp_path, monkeypatch,
                                                          caplog) -> None:
    monkeypatch.setitem(DETECTORS, "toy", Dark)
    folder = _folder(tmp_path / "images", 8, seed=7)
    dark = {s.name for s in load_dataset(folder).samples
            if to_tensor(s.image[None]).mean() < 0.45}
    assert 0 < len(dark) < 8  # the images make both kinds
    fitted, scores = tmp_path / "toy.json", tmp_path / "scores.csv"
    assert cli.main(["detect", "fit", "--detector", "toy", "--images", str(folder), "--fpr",
                     "0.2", "--folds", "0", "--out", str(fitted)]) == 0
    assert cli.main(["detect", "score", "--images", str(folder), "--thresholds", str(fitted),
                     "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert {r["file"] for r in rows}.isdisjoint(dark) and len(rows) == 8 - len(dark)
    assert all(math.isfinite(float(r["brightness"])) for r in rows)
    assert all(f"skipping {name}: its toy scores are not finite" in caplog.text
               for name in dark)


# ------------------------------------------------------------------------------ the ensemble


def test_inconsistency_of_hand_made_maps() -> None:
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 0, :] = 1.0  # top row
    a[1, 0, :, 0] = torch.tensor([0.9, 0.8, 0.7, 0.6])  # left column
    assert inconsistency([a, a.clone()]).tolist() == [0.0, 0.0]
    assert soft_inconsistency([a, a.clone()]).abs().max() < 1e-6
    bottom = a.flip(2)  # sample 0: the bottom row, disjoint from the top row at k ≤ 25%
    assert inconsistency([a, bottom], ks=(0.25,))[0] == 1.0
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(5, 1, 8, 8, generator=gen), torch.rand(5, 1, 2, 2, generator=gen),
            torch.rand(5, 1, 8, 8, generator=gen)]
    for measure in (inconsistency, soft_inconsistency):
        value = measure(maps)
        assert value.shape == (5,) and ((value >= 0) & (value <= 1)).all()
    # three maps: the mean over the three pairs, each at the coarsest (2×2) resolution
    coarse = pooled(maps)
    assert [tuple(m.shape[-2:]) for m in coarse] == [(2, 2)] * 3
    torch.testing.assert_close(coarse[0], torch.nn.functional.avg_pool2d(maps[0], 4))
    pairs = [inconsistency([coarse[i], coarse[j]]) for i, j in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(inconsistency(maps), torch.stack(pairs).mean(dim=0))


def test_ensemble_detector_scores_fit_save_load(tiny_model, tmp_path) -> None:
    detector = EnsembleDetector(tiny_model, ["cam", "grad"])
    scores = detector.scores(make_images(6, seed=3))
    assert scores.shape == (6, 1) and ((scores >= 0) & (scores <= 1)).all()
    assert detector.seconds_per_input > 0
    detector.fit(make_images(10, seed=10), fpr=0.2)
    path = tmp_path / "ensemble.json"
    detector.save(path)
    state = json.loads(path.read_text())
    assert state["detector"] == "ensemble" and state["interpreters"] == ["cam", "grad"]
    loaded = load_detector(tiny_model, path)
    assert isinstance(loaded, EnsembleDetector) and loaded.ks == detector.ks
    images = make_images(4, seed=4)
    assert torch.equal(loaded.detect(images).joint_flag, detector.detect(images).joint_flag)
    with pytest.raises(ValueError, match="not 'squeeze'"):
        FeatureSqueezingDetector.load(tiny_model, path)


def test_ensemble_penalty_has_gradient_flow(tiny_model) -> None:
    detector = EnsembleDetector(tiny_model, ["cam", "grad"]).fit(make_images(10, seed=10), 0.2)
    guard = detector.guard(margin=0.0)
    assert isinstance(guard, EnsembleGuard)
    x = to_tensor(make_images(4, seed=5)).requires_grad_(True)
    logits = tiny_model(x)
    penalty = guard.penalty(x, logits, torch.arange(4))
    assert penalty.shape == (4,) and (penalty > 0).all()
    penalty.sum().backward()
    assert x.grad.abs().sum() > 0
    # nothing above the margin: no penalty
    assert not detector.guard(margin=1e6).penalty(x.detach(), logits, torch.arange(4)).any()
    with pytest.raises(ValueError, match="cannot differentiate mask"):
        EnsembleDetector(tiny_model, ["cam", "mask"]).fit_scores(torch.zeros(3, 1)).guard()


# ------------------------------------------------------------------------------ adaptive ADV²


def test_adaptive_adv2_against_the_ensemble_and_against_both(tiny_model) -> None:
    benign = make_images(20, seed=10)
    ensemble = EnsembleDetector(tiny_model, ["cam", "grad"]).fit(benign, 0.1)
    squeeze = FeatureSqueezingDetector(tiny_model, ["bit-2", "median-2x2"]).fit(benign, 0.1)
    images, targets = _setup(tiny_model)
    attack = ADV2.for_interpreter(tiny_model, CAM(tiny_model), steps=10, warm_steps=10,
                                  eps=24 / 255)
    one = AdaptiveADV2(attack, ensemble, steps=8)
    assert [type(g) for g in one.guards] == [EnsembleGuard] and one.bit_depth is None
    result = one(images, targets)
    assert result.adv.shape == images.shape and (result.linf <= 24).all()
    both = AdaptiveADV2(attack, [squeeze, ensemble], steps=20)
    joint = both.joint(())
    assert isinstance(joint.criterion.second, Undetected)
    assert isinstance(joint.criterion.first.second, Undetected)
    assert [g["detector"] for g in both.config()["guards"]] == ["squeeze", "ensemble"]
    result = both(images, targets)
    evaded = result.success.bool()
    assert evaded.any()  # a successful image is undetected by every detector
    for detector in (squeeze, ensemble):
        assert not (detector.detect(result.adv).joint_flag.cpu() & evaded).any()
    with pytest.raises(ValueError, match="single detector"):
        AdaptiveADV2(attack, [squeeze, ensemble], [0])


def test_toy_detector_from_outside_through_adaptive_adv2(tiny_model, toy, tmp_path) -> None:
    path = tmp_path / "toy.json"
    build_detector("toy", tiny_model, {"gain": 2.0}).fit(make_images(10, seed=10), 0.2).save(path)
    loaded = load_detector(tiny_model, path)
    assert isinstance(loaded, Brightness) and loaded.gain == 2.0
    cfg = pipeline.AttackConfig(attack="adv2", steps=4, warm_steps=4, adaptive=str(path))
    adaptive = pipeline.build_attack(cfg, tiny_model, CAM(tiny_model))
    assert isinstance(adaptive.guards[0], BrightnessGuard)
    images, targets = _setup(tiny_model, 2)
    assert adaptive(images, targets).adv.shape == images.shape


# ------------------------------------------------------------------------------------- CLI


def test_cli_fits_and_scores_a_toy_detector_from_outside(toy, tmp_path, capsys) -> None:
    folder = _folder(tmp_path / "images", 5, seed=7)
    fitted = tmp_path / "toy.json"
    assert cli.main(["detect", "fit", "--detector", "toy", "--detector-setting", "gain=3",
                     "--images", str(folder), "--fpr", "0.2", "--out", str(fitted)]) == 0
    state = json.loads(fitted.read_text())
    assert state["detector"] == "toy" and state["gain"] == 3
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["cross_validated_fpr"]) == {"brightness", "joint"}
    scores = tmp_path / "scores.csv"
    assert cli.main(["detect", "score", "--images", str(folder), "--thresholds", str(fitted),
                     "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert list(rows[0]) == ["file", "brightness", "joint", "flagged"]
    brightness = [3 * to_tensor(s.image[None]).mean() for s in load_dataset(folder).samples]
    np.testing.assert_allclose([float(r["brightness"]) for r in rows], brightness, atol=1e-5)
    assert sum(int(r["flagged"]) for r in rows) == 1  # ⌊0.2 · 5⌋ on the fitting images
    assert "toy" in capsys.readouterr().out


def test_cli_ensemble_detector_and_adaptive_against_both(tmp_path, capsys) -> None:
    folder = _folder(tmp_path / "images", 3, seed=7)
    files = {}
    for name, option in (("ensemble", ["--interpreters", "cam", "grad"]),
                         ("squeeze", ["--squeezers", "bit-3"])):
        files[name] = tmp_path / f"{name}.json"
        assert cli.main(["detect", "fit", "--detector", name, *option, "--images", str(folder),
                         "--fpr", "0.4", "--out", str(files[name])]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "}")
    assert printed["detector"] == "ensemble" and printed["seconds_per_image"] > 0
    scores = tmp_path / "scores.csv"
    assert cli.main(["detect", "score", "--images", str(folder), "--thresholds",
                     str(files["ensemble"]), "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert list(rows[0]) == ["file", "inconsistency", "joint", "flagged"]
    assert all(0 <= float(r["inconsistency"]) <= 1 and r["flagged"] in "01" for r in rows)
    out = tmp_path / "run"
    assert cli.main(["attack", "--interpreter", "cam", "--images", str(folder), "--limit", "1",
                     "--steps", "2", "--warm-steps", "2", "--adaptive", str(files["squeeze"]),
                     str(files["ensemble"]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["adaptive"] == [str(files["squeeze"]), str(files["ensemble"])]
    assert [g["detector"] for g in config["attack_config"]["guards"]] == ["squeeze", "ensemble"]


@pytest.mark.parametrize("argv, option", [
    (["--detector", "nope"], "--detector"),
    (["--detector", "ensemble", "--squeezers", "bit-2"], "--squeezers"),
    (["--detector", "ensemble", "--interpreters", "cam"], "--interpreters"),
    (["--detector", "ensemble", "--detector-setting", "top=1"], "--detector-setting top"),
])
def test_cli_bad_detector_or_setting_exits_2_naming_the_option(argv, option, tmp_path, capsys,
                                                               caplog) -> None:
    folder = _folder(tmp_path / "images", 1, seed=7)
    try:
        code = cli.main(["detect", "fit", *argv, "--images", str(folder), "--out",
                         str(tmp_path / "d.json")])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    text = capsys.readouterr().err + caplog.text
    assert code == 2 and option in text and "Traceback" not in text
    assert not (tmp_path / "d.json").exists()


# ------------------------------------------------------------------------------- experiment


def test_experiment_scores_with_every_configured_detector(tmp_path) -> None:
    _folder(tmp_path / "images", 2, seed=0)
    _folder(tmp_path / "benign", 4, seed=1)
    data = {"images": "images", "image_size": 64, "interpreters": ["cam"],
            "attacks": {"pgd": {"steps": 2}}, "transfer": False, "report": {"examples": 1},
            "detection": {"benign_images": "benign", "detectors": ["squeeze", "ensemble"],
                          "squeezers": ["bit-4"],
                          "settings": {"ensemble": {"interpreters": ["cam", "grad"]}}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_experiment(load_config(path), tmp_path / "run", progress=False)["detection"]
    assert set(summary["joint_threshold"]) == {"squeeze", "ensemble"}
    assert summary["seconds_per_image"]["ensemble"] > 0
    assert set(summary["rates"]["benign (n=4)"]) == {"squeeze/bit-4", "squeeze/joint",
                                                     "ensemble/inconsistency", "ensemble/joint"}
    table = (tmp_path / "run" / "report" / "tables" / "detection.csv").read_text()
    assert "ensemble,inconsistency" in table
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "detection cost: squeeze " in report and "s / image" in report
    for detection, message in (
            ({"detectors": ["nope"]}, r"detection.detectors\[0\]: unknown detector 'nope'"),
            ({"settings": {"ensemble": {}}}, r"detection.settings.ensemble: not one of"),
            ({"detectors": ["ensemble"], "settings": {"ensemble": {"top": 1}}},
             r"detection.settings.ensemble.top: the ensemble detector has no setting")):
        bad = {**data, "detection": {"benign_images": "benign", **detection}}
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_experiment_records_non_finite_scores_as_errors_and_goes_on(tmp_path,
                                                                    monkeypatch) -> None:
    _folder(tmp_path / "images", 2, seed=0)
    _folder(tmp_path / "benign", 4, seed=1)
    means = sorted(float(to_tensor(s.image[None]).mean())
                   for s in load_dataset(tmp_path / "benign", size=64).samples)

    class HalfDark(Brightness):  # NaN on the darker half of the benign images
        def score_batch(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(1, 2, 3))[:, None]
            return torch.where(mean < (means[1] + means[2]) / 2, torch.nan, mean)
    monkeypatch.setitem(DETECTORS, "toy", HalfDark)
    data = {"images": "images", "image_size": 64, "interpreters": ["cam"],
            "attacks": {"pgd": {"steps": 2}}, "transfer": False, "report": {"examples": 1},
            "detection": {"benign_images": "benign", "detectors": ["toy"]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_experiment(load_config(path), tmp_path / "run", progress=False)["detection"]
    assert set(summary["rates"]) >= {"benign (n=2)"}  # the two finite ones fit the threshold
    errors = list((tmp_path / "run").rglob("*.error.json"))
    assert len([e for e in errors if "non-finite detector scores" in e.read_text()]) >= 2
