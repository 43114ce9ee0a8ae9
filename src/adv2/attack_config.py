"""The settings of an attack run (``adv2 attack``'s options, an experiment file's attack
keys): :class:`AttackConfig`, their validation, and the attack they describe
(:func:`build_attack`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from adv2 import target_maps
from adv2.attacks import (ATTACKS, MAP_LOSSES, OPTIMIZERS, PREDICTION_LOSSES, Attack,
                          AttackSettings, SettingError, parse_schedule)
from adv2.attacks import support as support_mod
from adv2.attacks.settings import THREATS
from adv2.blackbox import ANSWERS, PLACEMENTS
from adv2.interpreters import Interpreter
from adv2.interpreters.plugins import require_differentiable, resolve
from adv2.models import Classifier


@dataclass(frozen=True)
class AttackConfig(AttackSettings):
    """Every setting of an attack run (saved as config.json): the attack's
    (:class:`~adv2.attacks.settings.AttackSettings`; ``None`` means the interpreter's default,
    filled by :meth:`resolved`) and the run's."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str = "cpu"  # the classifier's torch device: everything runs there
    interpreter: str = "cam"
    target_class: int | None = None
    target_map: str = "benign"
    batch_size: int = 8
    #: interpreter settings other than the defaults (keyword arguments of its class, e.g.
    #: MASK's attack ``strategy`` or RTS's ``checkpoint``)
    interpreter_settings: dict = field(default_factory=dict)

    def resolved(self) -> AttackConfig:
        """A copy with the attack's unset settings filled from its registry entry's defaults
        against the interpreter (:meth:`AttackSettings.resolved`)."""
        return AttackSettings.resolved(self, resolve(self.interpreter))

    def recorded(self, interpreter: Interpreter) -> dict[str, Any]:
        """What a run records and a resume compares: these settings with the defaults filled
        in, and the map settings of ``interpreter`` (``interpreter_config``)."""
        return asdict(self.resolved()) | {"interpreter_config": interpreter.config()}

    def validate(self, n_classes: int | None = None) -> None:
        """Check every setting (:func:`check_setting`), the attack's form under its threat and
        ``adaptive`` (:meth:`AttackSettings.entry`) and, once the model's ``n_classes`` is
        known, the target class; raises :class:`SettingError` naming the first bad one."""
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name))
        if self.optimizer not in (None, "sign") and self.attack == "pgd":
            raise SettingError("optimizer", "PGD takes sign steps; it applies to ADV² only")
        if self.random_start and self.attack == "adv2":
            raise SettingError("random_start", "ADV² starts from its PGD warm start; a random "
                                               "start applies to PGD only")
        self.entry()
        if n_classes is not None:
            check_target_class(self.target_class, n_classes)


def check_target_class(target_class: int | None, n_classes: int) -> None:
    """Refuse a fixed target class the model lacks (:class:`SettingError` naming
    ``target_class``); ``None`` (a seeded class per image) is always valid."""
    if target_class is not None and not 0 <= target_class < n_classes:
        raise SettingError("target_class", f"must be a class index in [0, {n_classes - 1}] "
                                           f"of the model, got {target_class}")


def parse_number(text: str | float | int) -> float:
    """A number, or a fraction text such as ``8/255`` (ValueError otherwise)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    num, slash, den = str(text).partition("/")
    try:
        return float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number or a fraction like 8/255, got {text!r}") from None


#: what each attack setting must be (checked by :func:`check_setting`)
_RANGES: dict[str, tuple[str, Any]] = {
    "eps": ("in (0, 1]", lambda v: 0 < v <= 1),
    "steps": ("≥ 0", lambda v: v >= 0),
    "warm_steps": ("≥ 0", lambda v: v >= 0),
    "patience": ("≥ 0", lambda v: v >= 0),
    "lam_search": ("≥ 0", lambda v: v >= 0),
    "lr": ("> 0", lambda v: v > 0),
    "lr_decay": ("> 0", lambda v: v > 0),
    "batch_size": ("≥ 1", lambda v: v >= 1),
    "limit": ("≥ 1", lambda v: v >= 1),
    "target_class": ("≥ 0", lambda v: v >= 0),
    "seed": ("≥ 0", lambda v: v >= 0),
    "queries": ("≥ 0", lambda v: v >= 0),
    "stop_iou": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "p_init": ("in (0, 1]", lambda v: 0 < v <= 1),
}


def check_setting(key: str, value: Any) -> None:
    """Validate one attack setting (``None`` means its default); raises :class:`SettingError`.

    The one validation of ``adv2 attack``'s options and of an experiment file's attack keys.
    """
    if value is None:
        return
    registries = {"optimizer": OPTIMIZERS, "pred_loss": PREDICTION_LOSSES,
                  "map_loss": MAP_LOSSES, "attack": ATTACKS,
                  "target_map": target_maps.KINDS, "threat": THREATS, "answers": ANSWERS,
                  "placement": PLACEMENTS}
    if key in registries and value not in registries[key]:
        raise SettingError(key, f"unknown value {value!r}; choose from {sorted(registries[key])}")
    if key == "support":
        try:
            support_mod.parse(str(value))
        except ValueError as exc:
            raise SettingError(key, str(exc)) from None
    if key == "lam":
        try:
            parse_schedule(str(value))
        except ValueError as exc:
            raise SettingError(key, f"bad λ schedule {value!r} ({exc})") from None
    if key == "device":
        try:
            torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise SettingError(key, f"{value!r} is not a torch device ({exc})") from None
    if key in _RANGES:
        what, ok = _RANGES[key]
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(key, f"must be a finite number, got {value}")
        if not ok(value):
            raise SettingError(key, f"must be {what}, got {value}")


def build_attack(cfg: AttackConfig, model: Classifier,
                 interpreter: Interpreter | None) -> Attack:
    """The attack ``cfg`` describes (its ``None`` settings filled with the defaults), built by
    its registry entry (:meth:`AttackSettings.build`; with ``cfg.adaptive``, its adaptive form).
    An attack that differentiates the interpreter refuses one that is not differentiable
    (ValueError naming it)."""
    cfg = cfg.resolved()
    if cfg.entry().differentiates:
        require_differentiable(cfg.interpreter)
    return AttackSettings.build(cfg, model, interpreter)
