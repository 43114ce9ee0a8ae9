"""How :class:`~adv2.attacks.settings.AttackSettings` with ``threat="black-box"`` build the
black-box attacks: PGD's black-box form is the prediction-only random search, ADV²'s is
black-box ADV² (the joint loss), each on an :class:`~adv2.blackbox.Oracle` of the model and
interpreter, optionally started by a transfer attack on local surrogates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from adv2.attacks.settings import AttackSettings
from adv2.blackbox.oracle import Oracle
from adv2.blackbox.search import RandomSearch
from adv2.blackbox.transfer import TransferAttack
from adv2.errors import SettingError
from adv2.interpreters import Interpreter
from adv2.models import Classifier, ModelError, load_model, model_digest


def baseline_defaults(interpreter: type[Interpreter] | Interpreter,
                      support: str) -> Mapping[str, Any]:
    """The prediction-only search's unset settings: Square Attack's first square."""
    return {"p_init": RandomSearch.p_init}


def adv2_defaults(interpreter: type[Interpreter] | Interpreter,
                  support: str) -> Mapping[str, Any]:
    """Black-box ADV²'s unset settings: the interpreter's ``blackbox_attack_defaults``."""
    return interpreter.blackbox_attack_defaults


def transfer_start(settings: AttackSettings, model: Classifier) -> TransferAttack | None:
    """The transfer attack (on the prediction) on the surrogates ``settings.surrogate`` names
    (model names joined by ``+``, loaded on the attacked model's device); None without a
    surrogate. A surrogate with the attacked model's weights is a SettingError: a transfer
    start must not see the attacked model."""
    if settings.surrogate is None:
        return None
    names = [name.strip() for name in settings.surrogate.split("+")]
    if not all(names):
        raise SettingError("surrogate", f"{settings.surrogate!r}: model names joined by '+'")
    try:
        surrogates = [load_model(name, device=model.device) for name in names]
    except ModelError as exc:
        raise SettingError("surrogate", str(exc)) from None
    attacked = model_digest(model)
    for name, surrogate in zip(names, surrogates):
        if model_digest(surrogate) == attacked:
            raise SettingError("surrogate", f"{name!r} is the attacked model itself; a "
                                            "transfer start needs other models")
    return TransferAttack(surrogates, eps=settings.eps, seed=settings.seed)


def _search(settings: AttackSettings, model: Classifier, interpreter: Interpreter | None,
            lam: float) -> RandomSearch:
    """The random search ``settings`` describe, with map weight ``lam`` (a SettingError
    naming the setting the oracle or the search refuses)."""
    return RandomSearch(Oracle(model, interpreter, settings.answers, settings.queries),
                        eps=settings.eps, queries=settings.queries, lam=lam,
                        stop_iou=settings.stop_iou, patience=settings.patience or None,
                        seed=settings.seed, start=transfer_start(settings, model),
                        placement=settings.placement, p_init=settings.p_init)


def build_baseline(settings: AttackSettings, model: Classifier,
                   interpreter: Interpreter | None) -> RandomSearch:
    """PGD's black-box form: the targeted random search on the prediction alone."""
    return _search(replace(settings, stop_iou=None), model, interpreter, 0.0)


def build_adv2(settings: AttackSettings, model: Classifier,
               interpreter: Interpreter | None) -> RandomSearch:
    """ADV²'s black-box form: the random search on margin + λ·map distance (a constant λ)."""
    try:
        lam = float(settings.lam)
    except (TypeError, ValueError):
        raise SettingError("lam", f"black-box ADV² takes a constant λ (a number), got "
                                  f"{settings.lam!r}") from None
    if lam <= 0:
        raise SettingError("lam", f"black-box ADV² needs λ > 0 (the map term), got {lam:g}")
    return _search(settings, model, interpreter, lam)
