"""adv2 extended from outside the package: a toy attack entered into ``ATTACKS`` by this test
module and a toy interpreter from a temporary module (``toymod:Energy``) run through ``adv2
attack`` and ``adv2 run`` on the tiny model; a key that is not a setting is an error naming it
in defaults, on the command line, in Python and in experiment files."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_images, make_tiny_model
from PIL import Image
from test_experiment import _csv

from adv2 import cli
from adv2.attacks import ADV2, ATTACKS, PGD, AttackEntry, AttackSettings, SettingError, judge
from adv2.attacks.lattice import project
from adv2.attacks.result import AttackResult, Images, as_batch, home_of
from adv2.data import load_dataset, quantise
from adv2.experiment import ConfigError, parse_config, runner
from adv2.interpreters import CAM
from adv2.models import device_of
from adv2.pipeline import AttackConfig

TOY = "toymod:Energy"

#: the toy interpreter's module: the image's energy, pooled; its ADV² defaults shortened, and a
#: subclass whose defaults hold a misspelt key
TOY_MODULE = '''
"""A toy interpreter from outside adv2: where the image is bright."""

import torch.nn.functional as F

from adv2.interpreters import Interpreter
from adv2.interpreters.base import minmax


class Energy(Interpreter):
    """The mean of x² over the channels, pool×pool average pooling, min–max per image."""

    name = "energy"
    attack_defaults = {**Interpreter.attack_defaults, "steps": 2, "warm_steps": 1}

    def __init__(self, model, pool: int = 4) -> None:
        super().__init__(model)
        self.pool = pool

    def resolution(self, height, width):
        return height // self.pool, width // self.pool

    def explain(self, x, classes):
        energy = F.avg_pool2d(x.pow(2).mean(dim=1, keepdim=True), self.pool)
        return self.model(x), minmax(energy)

    def config(self):
        return {"name": self.name, "pool": self.pool}


class Misspelt(Energy):
    """Energy whose ADV² defaults misspell a setting."""

    attack_defaults = {**Energy.attack_defaults, "warmsteps": 1}
'''


class SignSteps:
    """A toy attack: ``steps`` signed-gradient steps of ε/steps on the cross entropy toward the
    target, on the uint8 lattice inside the ε-ball, judged by adv2 (one pass per step).

    Shape:
        the call shape of :class:`adv2.attacks.Attack`; the support is ignored.
    """

    def __init__(self, model: torch.nn.Module, interpreter, eps: float, steps: int) -> None:
        self.model, self.interpreter, self.eps, self.steps = model, interpreter, eps, steps

    @staticmethod
    def settings_defaults(interpreter, support: str) -> dict:
        """Two steps, whatever the interpreter."""
        return {"steps": 2}

    @classmethod
    def from_settings(cls, settings: AttackSettings, model, interpreter) -> SignSteps:
        return cls(model, interpreter, settings.eps, settings.steps)

    def __call__(self, x: Images, targets: torch.Tensor, target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        x0 = as_batch(x, device_of(self.model))
        targets = targets.to(x0.device)
        adv = x0
        for _ in range(self.steps):
            adv = adv.detach().requires_grad_()
            (grad,) = torch.autograd.grad(F.cross_entropy(self.model(adv), targets), adv)
            adv = project(quantise(adv - self.eps / self.steps * grad.sign()), x0, self.eps)
        passes = torch.full((len(x0),), self.steps, device=x0.device)
        return judge(adv.detach(), x0, targets, self.model, passes, self.interpreter,
                     target_maps).to(home_of(x))

    def config(self) -> dict:
        return {"attack": "sign-steps", "eps": self.eps, "steps": self.steps}


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The toy attack registered as ``sign-steps`` (display name ``Sign steps``), the toy
    interpreter's module ``toymod`` on sys.path, and ``adv2 attack`` / ``adv2 run`` on the tiny
    model (32×32 images); returns the interpreter's spec. The registry is restored after."""
    monkeypatch.setitem(ATTACKS, "sign-steps", AttackEntry(
        SignSteps, "Sign steps", SignSteps.settings_defaults, SignSteps.from_settings))
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "toymod.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    monkeypatch.delitem(sys.modules, "toymod", raising=False)
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0))
    monkeypatch.setattr(runner, "load_model", lambda *args: make_tiny_model(0))
    monkeypatch.setattr(cli.attack, "load_dataset", functools.partial(load_dataset, size=32))
    return TOY


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(make_images(n, seed=3, size=32)):
        Image.fromarray(image).save(folder / f"img_{i}.png")
    return folder


def _attack(images: Path, out: Path, *options: str) -> int:
    return cli.main(["attack", "--images", str(images), "--out", str(out), *options])


def test_the_toy_attack_and_interpreter_run_through_adv2_attack(toy, tmp_path) -> None:
    images = _images(tmp_path / "images")
    out = tmp_path / "run"
    assert _attack(images, out, "--attack", "sign-steps", "--interpreter", toy) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["attack"], config["interpreter"], config["steps"]) == ("sign-steps", toy, 2)
    assert config["attack_config"] == {"attack": "sign-steps", "eps": 8 / 255, "steps": 2}
    assert config["interpreter_config"] == {"name": toy, "pool": 4}
    rows = _csv(out / "results.csv")
    assert [r["file"] for r in rows] == [f"img_{i}.png" for i in range(3)]
    assert all(float(r["changed"]) > 0 for r in rows)
    for row in rows:  # the toy attack's images: inside the 8/255 ball, and moved
        clean, adv = (np.asarray(Image.open(out / "samples" / row["file"] / f), dtype=int)
                      for f in ("clean.png", "adv.png"))
        assert 0 < np.abs(adv - clean).max() <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_images"], summary["passes_per_image"]) == (3, 2)
    # the toy interpreter's own ADV² defaults reach adv2 attack's ADV²
    assert _attack(images, tmp_path / "adv2", "--interpreter", toy, "--limit", "1") == 0
    adv2 = json.loads((tmp_path / "adv2" / "config.json").read_text())
    assert (adv2["steps"], adv2["warm_steps"]) == (2, 1)


def test_the_toy_attack_and_interpreter_run_through_adv2_run(toy, tmp_path) -> None:
    _images(tmp_path / "images")
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "images": "images", "image_size": 32, "interpreters": ["cam", toy],
        "attacks": {"sign-steps": {"steps": 3, toy: {"steps": 1}},
                    "adv2": {"cam": {"steps": 2, "warm_steps": 1}}},
        "transfer": False, "report": {"examples": 1}}))
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    for interpreter in ("cam", toy):
        assert summary["attacks"][interpreter]["sign-steps"]["images"] == 3
    attacked = {(r["interpreter"], r["attack"]): r
                for r in _csv(out / "report" / "tables" / "attacks.csv")}
    assert set(attacked) == {(i, a) for i in ("cam", toy) for a in ("Sign steps", "ADV²")}
    assert float(attacked[("cam", "Sign steps")]["passes/image"]) == 3
    assert float(attacked[(toy, "Sign steps")]["passes/image"]) == 1
    steps = {(r["interpreter"], r["attack"]): r["steps"]
             for r in _csv(out / "report" / "tables" / "settings.csv")}
    assert steps[("cam", "Sign steps")] == "3" and steps[(toy, "Sign steps")] == "1"
    assert steps[(toy, "ADV²")] == "2"  # the toy interpreter's own default
    rows = _csv(out / "report" / "results.csv")
    assert sorted(r["image"] for r in rows if r["attack"] == "sign-steps"
                  and r["interpreter"] == toy) == [f"img_{i}.png" for i in range(3)]


# ------------------------------------------------------------------- a key that is not a setting


def test_a_misspelt_key_in_defaults_is_an_error_naming_it(toy, tmp_path, caplog,
                                                          monkeypatch) -> None:
    """In an interpreter's ADV² defaults (Python, adv2 attack, an experiment file) and in a
    registered attack's defaults."""
    import toymod

    with pytest.raises(SettingError, match="warmsteps") as info:
        AttackSettings().resolved(toymod.Misspelt)
    assert info.value.key == "interpreter" and "attack 'adv2'" in info.value.problem
    images = _images(tmp_path / "images")
    assert _attack(images, tmp_path / "o", "--interpreter", "toymod:Misspelt") == 2
    assert "--interpreter: 'energy' with attack 'adv2'" in caplog.text
    assert "warmsteps" in caplog.text
    with pytest.raises(ConfigError, match=r"attacks.adv2 \(toymod:Misspelt\): .*warmsteps"):
        parse_config({"images": "images", "interpreters": ["toymod:Misspelt"],
                      "attacks": {"adv2": {}}, "transfer": False}, tmp_path)
    monkeypatch.setitem(ATTACKS, "sign-steps", AttackEntry(
        SignSteps, "Sign steps", lambda interpreter, support: {"stepz": 1},
        SignSteps.from_settings))
    with pytest.raises(SettingError, match="'sign-steps': unknown attack setting.*stepz"):
        AttackSettings(attack="sign-steps").resolved(CAM)


def test_a_key_that_is_not_a_setting_is_an_error_naming_it(toy, tmp_path, capsys) -> None:
    """On the command line, in Python and in an experiment file (an attack's key, an
    interpreter's overrides of an attack for an interpreter it does not run)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["attack", "--images", "x", "--out", "y", "--stepz", "3"])
    assert exit_.value.code == 2 and "--stepz" in capsys.readouterr().err
    for make in (lambda: AttackSettings(stepz=3), lambda: AttackConfig(stepz=3),
                 lambda: ADV2.for_interpreter(None, None, stepz=3),
                 lambda: PGD(None, stepz=3), lambda: SignSteps.from_settings(
                     AttackSettings(attack="sign-steps", stepz=3), None, None)):
        with pytest.raises(TypeError, match="'stepz'"):
            make()
    base = {"images": "images", "interpreters": ["cam", toy], "transfer": False}
    with pytest.raises(ConfigError, match=r"attacks.sign-steps.stepz; did you mean 'steps'"):
        parse_config(base | {"attacks": {"sign-steps": {"stepz": 3}}}, tmp_path)
    with pytest.raises(ConfigError, match=rf"attacks.sign-steps.{toy}.stepz"):
        parse_config(base | {"attacks": {"sign-steps": {toy: {"stepz": 3}}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"attacks.sign-steps.grad: 'grad' is not in "
                                          r"interpreters \['cam', 'toymod:Energy'\]"):
        parse_config(base | {"attacks": {"sign-steps": {"grad": {"steps": 3}}}}, tmp_path)
    assert parse_config(base | {"attacks": {"sign-steps": {toy: {"steps": 3}}}},
                        tmp_path).attacks == {"sign-steps": {toy: {"steps": 3}}}
