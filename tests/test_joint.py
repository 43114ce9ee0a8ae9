"""Multi-interpreter ADV² (``cam+grad``): the spelling, the normalised joint loss, verification
by each member's true interpreter, the per-interpreter outputs and the experiment file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, make_tiny_model
from PIL import Image

from adv2 import cli, metrics
from adv2.attacks import ADV2
from adv2.attacks.losses import MapMSE
from adv2.data import load_image, to_tensor
from adv2.experiment.config import ConfigError, parse_config
from adv2.interpreters import CAM, GRAD, build_interpreter
from adv2.interpreters.plugins import is_name, resolve
from test_devices import FactoryRecorder


@pytest.fixture
def joint():
    model = make_tiny_model(0)
    return model, build_interpreter("cam+grad", model)


def test_the_spelling_resolves_to_a_joint_with_the_lead_members_defaults() -> None:
    cls = resolve("cam+grad")
    assert cls.member_names == ("cam", "grad") and cls.lead == "grad"
    assert cls.attack_defaults == GRAD.attack_defaults  # GRAD's take the most steps
    assert resolve("rts+cam").lead == "cam" and is_name("cam+grad") and not is_name("cam+x")
    with pytest.raises(ValueError, match="'lime'"):
        resolve("cam+lime")
    with pytest.raises(ValueError, match="cam given twice"):
        resolve("cam+cam")
    with pytest.raises(ValueError, match="an empty member"):
        resolve("cam+")


def test_settings_reach_the_members(joint) -> None:
    model, _ = joint
    j = build_interpreter("cam+grad", model, **{"grad.pool": 2, "eps": 1e-3})
    cam, grad = j.members
    assert grad.pool == 2 and cam.eps == 1e-3  # a plain key: every member that takes it
    assert j.resolution(32, 32) == (1, 8 * 8 + 16 * 16)
    for bad, message in (({"lime.pool": 2}, "not a member"), ({"iterations": 3}, "no member")):
        with pytest.raises(ValueError, match=message):
            build_interpreter("cam+grad", model, **bad)


def test_the_loss_is_each_members_normalised_and_its_gradient_flows_through_every_map(
        joint) -> None:
    """ℓ = s_grad·(ℓ_cam/s_cam + ℓ_grad/s_grad), s the first call's losses: its gradient is
    the members' gradients so weighted, and each member's map moves it."""
    model, j = joint
    x = to_tensor(make_images(3, seed=2))
    classes = model(x).argmax(1)
    goal = j(to_tensor(make_images(3, seed=5)), classes).detach()
    parts = j.parts(goal, (32, 32))
    j.start_attack(x, classes)
    xg = x.clone().requires_grad_(True)
    _, loss = j.attack_loss(xg, classes, goal, MapMSE(), 0.3)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    own = {}
    for name, member in zip(j.member_names, j.members):
        xm = x.clone().requires_grad_(True)
        _, lm = member.attack_loss(xm, classes, parts[name], MapMSE(), 0.3)
        own[name] = (lm.detach(), torch.autograd.grad(lm.sum(), xm)[0])
    s_cam, s_grad = own["cam"][0], own["grad"][0]
    assert torch.allclose(loss, 2 * s_grad, rtol=1e-5)  # both terms start at the lead's value
    expected = (s_grad / s_cam).view(-1, 1, 1, 1) * own["cam"][1] + own["grad"][1]
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-7)
    for name in j.member_names:
        assert own[name][1].abs().sum() > 0, f"no gradient through {name}'s map"


def test_each_member_is_judged_by_its_true_interpreter(joint) -> None:
    model, j = joint
    x = to_tensor(make_images(4, seed=1))
    labels = model(x).argmax(1)
    targets = (labels + 3) % 10
    result = ADV2.for_interpreter(model, j, steps=6, warm_steps=10)(x, targets)
    assert set(result.per_interpreter) == {"cam", "grad"}
    singles = {"cam": CAM(model), "grad": GRAD(model)}
    for name, single in singles.items():
        benign = single(x, labels).detach()
        maps = single(result.x, targets).detach()
        assert torch.equal(result.per_interpreter[name].iou, metrics.iou(maps, benign))
        assert torch.equal(result.per_interpreter[name].l1, metrics.l1(maps, benign))
    assert torch.allclose(result.iou, (result.per_interpreter["cam"].iou
                                       + result.per_interpreter["grad"].iou) / 2)


def test_a_member_that_needs_verification_sets_the_schedule() -> None:
    """MASK's attack values are not its maps: the joint is judged on MASK's schedule, and
    MASK's tracking restarts from its own part of each verified map."""
    model = make_tiny_model(0)
    j = build_interpreter("cam+mask", model, **{"mask.iterations": 3, "mask.verify_every": 2})
    assert build_interpreter("cam+grad", model).verification() is None
    policy = j.verification()
    assert policy.every == 2 and policy.on_success
    x = to_tensor(make_images(2, seed=6))
    targets = (model(x).argmax(1) + 1) % 10
    result = ADV2.for_interpreter(model, j, steps=3, warm_steps=2)(x, targets)
    mask = j.members[1]
    assert mask._state.mask.shape[-2:] == j.parts(result.maps, (32, 32))["mask"].shape[-2:]
    assert set(result.per_interpreter) == {"cam", "mask"}


def test_no_tensor_is_made_without_a_device(joint) -> None:
    model, j = joint
    x = to_tensor(make_images(2, seed=3))
    targets = (model(x).argmax(1) + 1) % 10
    recorder = FactoryRecorder()
    with recorder:
        ADV2.for_interpreter(model, j, steps=3, warm_steps=2)(x, targets)
    assert not recorder.calls, recorder.calls


def _images(folder: Path) -> Path:
    folder.mkdir()
    for i, image in enumerate(make_images(2, seed=4, size=64)):
        Image.fromarray(image).save(folder / f"img_{i}.png")
    return folder


def test_the_command_line_reports_every_member(tmp_path, monkeypatch) -> None:
    """results.csv's iou_<name>/l1_<name> equal the single interpreter recomputed on adv.png;
    summary.json's per_interpreter their means."""
    model = make_tiny_model(0, 1000)
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: model)
    images, out = _images(tmp_path / "images"), tmp_path / "out"
    assert cli.main(["attack", "--images", str(images), "--out", str(out), "--interpreter",
                     "cam+grad", "--steps", "3", "--warm-steps", "2",
                     "--interpreter-setting", "grad.pool=8"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-4:] == ["iou_cam", "l1_cam", "iou_grad", "l1_grad"]
    singles = {"cam": CAM(model), "grad": GRAD(model, pool=8)}
    for row in rows:
        clean = to_tensor(load_image(images / row["file"])[None])
        adv = to_tensor(np.array(Image.open(out / "samples" / row["file"] / "adv.png"))[None])
        label, target = torch.tensor([int(row["label"])]), torch.tensor([int(row["target"])])
        for name, single in singles.items():
            benign, maps = single(clean, label).detach(), single(adv, target).detach()
            iou = float(metrics.iou(maps, benign).mean())
            assert float(row[f"iou_{name}"]) == pytest.approx(iou, abs=1e-6)
            assert float(row[f"l1_{name}"]) == pytest.approx(float(metrics.l1(maps, benign)),
                                                              abs=1e-6)
        assert float(row["iou"]) == pytest.approx(
            (float(row["iou_cam"]) + float(row["iou_grad"])) / 2, abs=2e-6)
    summary = json.loads((out / "summary.json").read_text())
    for name in ("cam", "grad"):
        assert summary["per_interpreter"][name]["iou_mean"] == pytest.approx(
            np.mean([float(r[f"iou_{name}"]) for r in rows]), abs=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 3 and config["lr"] == GRAD.attack_defaults["lr"]


@pytest.mark.parametrize("args, message", [
    (["--interpreter", "cam+lime"], "argument --interpreter: unknown interpreter 'lime'"),
    (["--interpreter", "cam+grad", "--interpreter-setting", "iterations=3"],
     "no member takes setting 'iterations'"),
])
def test_bad_members_exit_2_naming_them(tmp_path, monkeypatch, capsys, caplog, args,
                                       message) -> None:
    monkeypatch.setattr(cli.attack, "load_model", lambda *a: make_tiny_model(0, 1000))
    images = _images(tmp_path / "images")
    try:
        code = cli.main(["attack", "--images", str(images), "--out", str(tmp_path / "o"),
                         *args])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    err = capsys.readouterr().err + caplog.text
    assert code == 2 and message in err and "Traceback" not in err


def test_the_experiment_file_takes_the_same_spelling() -> None:
    cfg = parse_config({"images": "imgs", "interpreters": ["cam", "cam+grad"],
                        "attacks": {"adv2": {"steps": 5, "cam+grad": {"lam": "20"}}},
                        "interpreter_settings": {"cam+grad": {"grad.pool": 8}}})
    joint = cfg.attack_config("cam+grad", "adv2", 0)
    assert joint.lam == "20" and joint.steps == 5 and joint.lr == GRAD.attack_defaults["lr"]
    assert cfg.attack_config("cam", "adv2", 0).lam == CAM.attack_defaults["lam"]
    with pytest.raises(ConfigError, match="interpreter_settings.cam\\+grad.grad.pol; did you "
                                          "mean 'grad.pool'"):
        parse_config({"images": "imgs", "interpreters": ["cam+grad"],
                      "interpreter_settings": {"cam+grad": {"grad.pol": 8}}})


def test_a_joint_interpreter_is_stochastic_when_a_member_instance_is() -> None:
    model = make_tiny_model()
    joint = build_interpreter("ig+cam", model, **{"ig.baseline": "uniform", "ig.steps": 4})
    assert joint.members[0].stochastic and joint.stochastic  # judged with fresh seeds
    assert not build_interpreter("ig+cam", model, **{"ig.steps": 4}).stochastic


def test_a_member_at_its_target_does_not_swamp_the_joint_loss() -> None:
    from adv2.interpreters.joint import RELATIVE_FLOOR, StartScales
    scales = StartScales(lead=0)
    start = torch.tensor([[1.0, 0.0], [1.0, -0.01]])  # member 1 at its target, or below 0
    scales.normalise(start, torch.tensor([0, 1]))
    later = scales.normalise(torch.tensor([[0.5, 0.01], [0.5, 0.01]]), torch.tensor([0, 1]))
    assert torch.allclose(later, torch.full((2,), 0.5 + 0.01 / RELATIVE_FLOOR))
