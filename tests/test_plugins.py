"""Interpreters by spec: a user's class (``module:ClassName``: the example of
docs/interpreters-custom.md, written to a temporary module) and Captum's attributions
(``captum:<Name>``) through ``adv2 attack`` and ``adv2 run`` on the tiny model (in ``adv2 run``,
Captum's take PGD and explain the transfer study; ADV² skips them); bad specs, bad settings and
ADV² on a non-differentiable interpreter (CLI, experiment file, Python API) are one-line errors
naming the spec."""

from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import captum.attr
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, make_images, make_tiny_model
from PIL import Image
from test_cli import _attack, _make_images, _rows
from test_experiment import _csv

from adv2 import cli, metrics
from adv2.attacks import ADV2, AttackSettings
from adv2.data import load_dataset, to_tensor
from adv2.experiment import ConfigError, parse_config, runner, transfer
from adv2.interpreters import CAM, RTS, build_interpreter
from adv2.interpreters.option_types import check_options
from adv2.interpreters.grad import gradient_map
from adv2.records import Store

SPEC = "mymod:InputXGradient"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The docs' example interpreter in a module ``mymod`` on sys.path; returns its spec."""
    text = (REPO / "docs" / "interpreters-custom.md").read_text()
    code = re.search(r'```python\n("""An input × gradient.*?)```', text, re.S).group(1)
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "mymod.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    monkeypatch.delitem(sys.modules, "mymod", raising=False)
    return SPEC


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adv2 attack`` and ``adv2 run`` on the tiny model (and ``adv2 attack`` on 32×32
    crops)."""
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0))
    monkeypatch.setattr(runner, "load_model", lambda *args: make_tiny_model(0))
    monkeypatch.setattr(cli.attack, "load_dataset", functools.partial(load_dataset, size=32))


def _experiment(root: Path, **settings: object) -> Path:
    """An experiment file over three 32×32 images with ``settings``."""
    (root / "images").mkdir()
    for i, image in enumerate(make_images(3, size=32)):
        Image.fromarray(image).save(root / "images" / f"img_{i}.png")
    path = root / "plugin.yaml"
    path.write_text(yaml.safe_dump({"images": "images", "image_size": 32,
                                    "report": {"examples": 1}, **settings}))
    return path


def _map_of(method: str, image: np.ndarray, target: int, **settings: object) -> np.ndarray:
    """GRAD's post-processing of Captum's own attribution of a uint8 H×W×3 image."""
    x = to_tensor(image[None]).requires_grad_()
    attribution = getattr(captum.attr, method)(make_tiny_model(0))
    a = attribution.attribute(x, target=torch.tensor([target]), **settings)
    return gradient_map(a, 4)[0, 0].detach().numpy()


@pytest.mark.parametrize("attack", ["pgd", "adv2"])
def test_a_users_interpreter_runs_through_adv2_attack(plugin, tiny, tmp_path, attack) -> None:
    images = _make_images(tmp_path / "images")
    out = tmp_path / attack
    assert _attack(images, out, "--interpreter", plugin, "--attack", attack, "--steps", "3",
                   *(["--warm-steps", "2"] if attack == "adv2" else []),
                   "--interpreter-setting", "pool=2") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["interpreter"] == plugin
    assert config["interpreter_config"] == {"name": plugin, "pool": 2}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interpreter"] == plugin and summary["n_images"] == 3
    rows = _rows(out)
    assert len(rows) == 3 and all(0 <= float(r["l1"]) <= 1 for r in rows)
    assert np.load(out / "samples" / rows[0]["file"] / "adv_map.npy").shape == (16, 16)


def test_a_users_interpreter_runs_through_adv2_run(plugin, tiny, tmp_path) -> None:
    path = _experiment(tmp_path, interpreters=["cam", plugin],
                       interpreter_settings={plugin: {"pool": 2}},
                       attacks={"pgd": {"steps": 2}, "adv2": {"steps": 2, "warm_steps": 2,
                                                              plugin: {"lam": "20"}}})
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["attacks"][plugin]["adv2"]["images"] == 3
    assert summary["transfer"][plugin]["cam"]["images"] == 3
    rows = _csv(out / "report" / "results.csv")
    assert sorted((r["attack"], r["image"]) for r in rows if r["interpreter"] == plugin) == \
        sorted((a, f"img_{i}.png") for a in ("pgd", "adv2") for i in range(3))
    settings = {(r["interpreter"], r["attack"]): r["lam"]
                for r in _csv(out / "report" / "tables" / "settings.csv")}
    assert settings[(plugin, "ADV²")] == "20"
    assert (out / "results" / "mymod-InputXGradient" / "adv2" / "img_0.png.npz").is_file()
    assert not [p for p in (out / "results").rglob("*") if ":" in p.name]


@pytest.mark.parametrize("method, settings", [("Saliency", {}),
                                              ("IntegratedGradients", {"n_steps": 8})])
def test_captum_attributions_run_pgd_with_captums_own_maps(tiny, tmp_path, method,
                                                           settings) -> None:
    images = _make_images(tmp_path / "images")
    out = tmp_path / method
    options = [f"--interpreter-setting={k}={v}" for k, v in settings.items()]
    assert _attack(images, out, "--interpreter", f"captum:{method}", "--attack", "pgd",
                   "--steps", "2", *options) == 0
    rows = _rows(out)
    assert len(rows) == 3
    for row in rows:
        folder = out / "samples" / row["file"]
        for file, image, target in (("benign_map", "clean", "label"),
                                    ("adv_map", "adv", "target")):
            picture = np.array(Image.open(folder / f"{image}.png"))
            np.testing.assert_allclose(np.load(folder / f"{file}.npy"),
                                       _map_of(method, picture, int(row[target]), **settings),
                                       atol=1e-5)


def test_captum_takes_pgd_and_a_transfer_column_in_adv2_run(tiny, tmp_path, caplog) -> None:
    """With both attacks, transfer and detection: PGD against captum:Saliency, its maps of
    CAM's ADV² images (Captum's own) against the benign maps of its PGD records; no ADV², no
    transfer row, one log line and a report sentence saying so; a rerun adds nothing."""
    spec = "captum:Saliency"
    (tmp_path / "benign").mkdir()
    for i, image in enumerate(make_images(2, seed=1, size=32)):
        Image.fromarray(image).save(tmp_path / "benign" / f"b_{i}.png")
    path = _experiment(tmp_path, interpreters=["cam", spec],
                       attacks={"pgd": {"steps": 2}, "adv2": {"steps": 2, "warm_steps": 2}},
                       detection={"benign_images": "benign", "squeezers": ["bit-4"]})
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="adv2.experiment.runner")
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert caplog.text.count(f"{spec}: ADV² skipped: the interpreter is not differentiable") == 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary["attacks"][spec]) == ["pgd"]
    assert summary["attacks"][spec]["pgd"]["images"] == 3
    assert summary["attacks"]["cam"]["adv2"]["images"] == 3
    assert list(summary["transfer"]) == ["cam"]
    assert summary["transfer"]["cam"][spec]["images"] == 3
    for table in ("transfer_l1", "transfer_iou"):
        rows = _csv(out / "report" / "tables" / f"{table}.csv")
        assert [list(r.values())[0] for r in rows] == ["cam"]
        assert list(rows[0])[1:] == ["cam", spec]
    assert f"ADV² skips {spec} (not differentiable): no row, only a column." in \
        (out / "report" / "report.md").read_text()
    store = Store(out)
    for name in [f"img_{i}.png" for i in range(3)]:
        adv = store.load("cam/adv2", name)
        explained = store.load(transfer.stage("cam", spec), name)
        np.testing.assert_allclose(explained.arrays["map"],
                                   _map_of("Saliency", adv.arrays["adv"], adv.meta["target"]),
                                   atol=1e-5)
        benign = torch.from_numpy(store.load(f"{spec}/pgd", name).arrays["benign"])[None, None]
        assert explained.meta["l1"] == pytest.approx(float(metrics.l1(
            torch.from_numpy(explained.arrays["map"])[None, None], benign)[0]), abs=1e-6)
    folders = {p.parent.relative_to(out / "results").as_posix()
               for p in (out / "results").rglob("*.npz")}
    assert folders == {"cam/pgd", "cam/adv2", "captum-Saliency/pgd", "transfer/cam-to-cam",
                       "transfer/cam-to-captum-Saliency", "detection/benign",
                       "detection/cam/pgd", "detection/cam/adv2", "detection/captum-Saliency/pgd"}
    records = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()}
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()} \
        == records
    assert len(json.loads((out / "timing.json").read_text())["invocations"]) == 2


@pytest.mark.parametrize("method, builtin, extra", [
    ("IntegratedGradients", "ig", []), ("Saliency", "grad", []),
    ("LayerGradCam", "gradcam", ["--interpreter-setting", "layer=body"]),
    ("Saliency", "grad", ["--adaptive", "thresholds.json"]),
])
def test_adv2_refuses_captum_naming_the_builtin(tiny, tmp_path, capsys, caplog, method,
                                                builtin, extra) -> None:
    images = _make_images(tmp_path / "images")
    out = tmp_path / "out"
    assert _attack(images, out, "--interpreter", f"captum:{method}", "--attack", "adv2",
                   *extra) == 2
    assert (f"captum:{method} is not differentiable: ADV² needs a differentiable interpreter; "
            f"the built-in equivalent is `{builtin}`") in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError, match=rf"attacks.adv2 \(captum:{method}\): captum:{method} "
                                          "is not differentiable"):
        parse_config({"images": "imgs", "interpreters": [f"captum:{method}"],
                      "interpreter_settings": {f"captum:{method}": {"layer": "body"}}
                      if method.startswith("Layer") else {}})


def test_an_experiment_needs_pgd_for_an_interpreter_adv2_skips() -> None:
    assert parse_config({"images": "imgs", "interpreters": ["cam", "captum:Saliency"]}) \
        .adv2_interpreters() == ("cam",)
    with pytest.raises(ConfigError, match=re.escape(
            "interpreters[1]: captum:Saliency is not differentiable, so ADV² skips it: add pgd "
            "to attacks")):
        parse_config({"images": "imgs", "interpreters": ["cam", "captum:Saliency"],
                      "attacks": {"adv2": {}}})


def test_the_python_api_refuses_adv2_on_captum() -> None:
    """ADV2 itself, for_interpreter, the settings' build (adaptive ADV²'s base included) and a
    copy of an ADV² attack with it as the interpreter all refuse it (adaptive ADV² wraps one of
    these)."""
    model = make_tiny_model(0)
    saliency = build_interpreter("captum:Saliency", model)
    message = ("captum:Saliency is not differentiable: ADV² needs a differentiable interpreter; "
               "the built-in equivalent is `grad`")
    for make in (lambda: ADV2(model, saliency), lambda: ADV2.for_interpreter(model, saliency),
                 lambda: AttackSettings(adaptive="fitted.json").resolved(saliency).build(model, saliency),
                 lambda: replace(ADV2.for_interpreter(model, CAM(model)), interpreter=saliency)):
        with pytest.raises(ValueError, match=re.escape(message)):
            make()


@pytest.mark.parametrize("spec, problem", [
    ("nosuch.module:X", "cannot import nosuch.module (ModuleNotFoundError: No module named "
                        "'nosuch')"),
    ("adv2.metrics:nothing", "module adv2.metrics has no attribute 'nothing'"),
    ("adv2.metrics:l1", "adv2.metrics.l1 is not a subclass of adv2.interpreters.Interpreter"),
    ("captum:Nothing", "captum.attr has no attribution class 'Nothing'"),
])
def test_bad_specs_are_one_line_errors_naming_them(capsys, spec, problem) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["attack", "--images", "x", "--out", "y", "--interpreter", spec])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        f"adv2 attack: error: argument --interpreter: interpreter {spec!r}: {problem}")
    with pytest.raises(ConfigError, match=re.escape(f"interpreters[0]: interpreter {spec!r}: "
                                                    f"{problem}")):
        parse_config({"images": "imgs", "interpreters": [spec]})


def test_settings_a_class_rejects_are_named(plugin, tiny, tmp_path, caplog) -> None:
    images = _make_images(tmp_path / "images")
    assert _attack(images, tmp_path / "o", "--interpreter", plugin, "--interpreter-setting",
                   "poool=2") == 2
    assert f"interpreter {plugin!r}: " in caplog.text and "'poool'" in caplog.text
    with pytest.raises(ConfigError, match=rf"interpreter_settings.{plugin}.poool; did you "
                                          "mean 'pool'"):
        parse_config({"images": "imgs", "interpreters": [plugin],
                      "interpreter_settings": {plugin: {"poool": 2}}})
    with pytest.raises(ConfigError, match="interpreter_settings.captum:Saliency.n_steps"):
        parse_config({"images": "imgs", "interpreters": ["captum:Saliency"],
                      "attacks": {"pgd": {}}, "transfer": False,
                      "interpreter_settings": {"captum:Saliency": {"n_steps": 8}}})
    with pytest.raises(ValueError, match="interpreter 'captum:LayerGradCam': missing a "
                                         "required argument: 'layer'"):
        build_interpreter("captum:LayerGradCam", make_tiny_model(0))


def test_a_setting_of_the_wrong_kind_is_named_before_anything_runs(plugin, tiny, tmp_path,
                                                                   caplog) -> None:
    images = _make_images(tmp_path / "images")
    assert _attack(images, tmp_path / "o", "--interpreter", plugin, "--interpreter-setting",
                   "pool=abc") == 2
    assert f"interpreter {plugin!r}: pool: expected int, got 'abc'" in caplog.text
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match=r"interpreter_settings\.grad\.fast: expected bool, "
                                          "got 'yes'"):
        parse_config({"images": "imgs", "interpreters": ["grad"],
                      "interpreter_settings": {"grad": {"fast": "yes"}}})
    with pytest.raises(ValueError, match="'grad': beta_end: expected float, got None"):
        build_interpreter("cam+grad", make_tiny_model(0), **{"grad.beta_end": None})
    joint = build_interpreter("cam+grad", make_tiny_model(0), **{"grad.beta_end": 60})
    assert joint.members[1].beta_end == 60  # an int is a float
    check_options(RTS, {"checkpoint": None}), check_options(RTS, {"checkpoint": "rts.pt"})
    with pytest.raises(ValueError, match="checkpoint: expected str or Path or None, got 3"):
        check_options(RTS, {"checkpoint": 3})


def test_layer_and_random_captum_attributions() -> None:
    """Layer attributions give maps at the layer's resolution; the random ones draw each
    image's samples from its seed (explain_rows: a subset's own)."""
    model = make_tiny_model(0)
    x = to_tensor(make_images(3, size=32))
    classes = model(x).argmax(dim=1)
    gradcam = build_interpreter("captum:LayerGradCam", model, layer="body")
    maps = gradcam(x, classes)
    assert maps.shape == (3, 1, *gradcam.resolution(32, 32)) == (3, 1, 8, 8)
    assert maps.amin() == 0 and maps.amax() <= 1
    smooth = build_interpreter("captum:NoiseTunnel", model, nt_samples=3)
    assert smooth.stochastic and not smooth.differentiable
    smooth.use_seeds([5, 6, 7])
    first, again = smooth(x, classes), smooth(x, classes)
    rows = smooth.explain_rows(x[1:], classes[1:], torch.tensor([1, 2]))[1]
    assert torch.equal(first, again) and torch.equal(rows, first[1:])
    smooth.use_seeds([8, 6, 7])
    assert not torch.equal(smooth(x, classes)[0], first[0])


def test_adv2_imports_without_captum_and_captum_specs_say_how_to_install() -> None:
    code = ("import sys; sys.modules['captum'] = None\n"
            "import adv2.cli, adv2.experiment, adv2.pipeline\n"
            "from adv2.interpreters.plugins import resolve\n"
            "try:\n    resolve('captum:Saliency')\nexcept ValueError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("interpreter 'captum:Saliency' needs Captum, which is not "
                                   "installed: pip install captum (or pip install "
                                   "'adv2[captum]')")
