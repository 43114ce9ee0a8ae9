"""An attack's settings as a user writes them (CLI options, experiment keys) and the attack
they build, with the per-interpreter defaults filled in.

The defaults live with the interpreters (``Interpreter.attack_defaults``, with
``Interpreter.support_attack_defaults`` over them when the perturbation is confined to a
support; PGD's here), so ``ADV2.for_interpreter(model, interpreter)`` in Python and ``adv2
attack`` on the command line run the same attack.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any

from adv2.attacks.lam_search import LamSearch
from adv2.attacks.losses import MAP_LOSSES, PREDICTION_LOSSES
from adv2.attacks.optimizers import OPTIMIZERS
from adv2.attacks.schedules import Linear, parse_schedule
from adv2.attacks.step_search import MarginStepSearch

if TYPE_CHECKING:
    from adv2.attacks.adv2 import ADV2
    from adv2.attacks.pgd import PGD
    from adv2.interpreters import Interpreter
    from adv2.models import Classifier

#: targeted PGD: 100 sign steps of 1/255 on the cross entropy
PGD_DEFAULTS: dict[str, Any] = {"steps": 100, "optimizer": "sign", "lr": 1 / 255,
                                "pred_loss": "ce"}
#: the joint stage of adaptive ADV²: longer, no early stop, and no λ search unless asked for
#: (see :class:`~adv2.attacks.adaptive.AdaptiveADV2`)
ADAPTIVE_DEFAULTS: dict[str, Any] = {"steps": 200, "patience": 0, "lam_search": None}
#: the attack settings an experiment may set per attack (and per interpreter inside one)
ATTACK_KEYS = ("steps", "warm_steps", "lam", "optimizer", "lr", "lr_decay", "pred_loss",
               "map_loss", "patience", "random_start", "step_search", "lam_search")


@dataclass(frozen=True)
class AttackSettings:
    """The settings of PGD or ADV²; ``None`` means the default for the interpreter.

    Arguments:
        attack: ``pgd`` or ``adv2``. eps: the L∞ budget in [0,1] units. steps: PGD steps, or
        ADV²'s joint steps; warm_steps: ADV²'s PGD warm start. lam: λ schedule text (``5``,
        ``5:10``, ``1,2@0.5``). optimizer: ``sign`` or ``adam``; lr: its step size; lr_decay:
        the final step relative to the first (linear). pred_loss: ``ce``, ``cw``, ``smooth``;
        map_loss: ``mse``, ``l1``, ``logit``. patience: stop an image after this many steps
        without improvement (0: never). random_start: PGD starts uniformly in the ball.
        step_search: ADV²'s per-example step-length search. lam_search: ADV²'s reruns of
        the joint stage with per-image λ (None or 0: none; :mod:`adv2.attacks.lam_search`). seed:
        PGD's random start.
        support: where the perturbation may live (:func:`adv2.attacks.support.parse`; the
        support itself is built per batch and passed to the attack's call): any but ``full``
        takes the interpreter's ``support_attack_defaults`` over its ``attack_defaults``.

    Example:
        >>> AttackSettings(steps=50).resolved(cam).build(model, cam)  # doctest: +SKIP
    """

    attack: str = "adv2"
    eps: float = 8 / 255
    steps: int | None = None
    warm_steps: int | None = None
    lam: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    lr_decay: float | None = None
    pred_loss: str | None = None
    map_loss: str | None = None
    patience: int | None = None
    random_start: bool = False
    step_search: bool | None = None
    lam_search: int | None = None
    seed: int = 0
    support: str = "full"

    def defaults(self, interpreter: type[Interpreter] | Interpreter,
                 adaptive: bool = False) -> dict[str, Any]:
        """The values this attack's unset settings take for ``interpreter``: ADV²'s are its
        ``attack_defaults``, then its ``support_attack_defaults`` with a support other than
        ``full``, then, for adaptive ADV², :data:`ADAPTIVE_DEFAULTS`."""
        if self.attack == "pgd":
            return PGD_DEFAULTS
        confined = interpreter.support_attack_defaults if self.support != "full" else {}
        return {**interpreter.attack_defaults, **confined,
                **(ADAPTIVE_DEFAULTS if adaptive else {})}

    def resolved(self, interpreter: type[Interpreter] | Interpreter, adaptive: bool = False):
        """A copy with every ``None`` setting filled from :meth:`defaults`; a default whose key
        is not a setting is a ValueError naming the interpreter and the key."""
        names = {f.name for f in fields(AttackSettings)}
        defaults = self.defaults(interpreter, adaptive)
        unknown = sorted(set(defaults) - names)
        if unknown:
            owner = getattr(interpreter, "name", None) or getattr(interpreter, "__name__", "")
            raise ValueError(f"interpreter {owner!r}: unknown attack setting(s) "
                             f"{', '.join(unknown)} in its attack defaults; the settings are "
                             f"{', '.join(sorted(names - {'attack', 'support'}))}")
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **filled)

    def build(self, model: Classifier, interpreter: Interpreter | None) -> PGD | ADV2:
        """The attack these (resolved) settings describe."""
        from adv2.attacks.adv2 import ADV2
        from adv2.attacks.pgd import PGD

        if self.attack == "pgd":
            if self.optimizer != "sign":
                raise ValueError("PGD takes sign steps; the optimizer applies to ADV² only")
            return PGD(model, interpreter, eps=self.eps, steps=self.steps, step_size=self.lr,
                       random_start=self.random_start, seed=self.seed,
                       loss=PREDICTION_LOSSES[self.pred_loss]())
        if self.attack == "adv2":
            return ADV2(
                model, interpreter, eps=self.eps, steps=self.steps, lam=parse_schedule(self.lam),
                pred_loss=PREDICTION_LOSSES[self.pred_loss](),
                map_loss=MAP_LOSSES[self.map_loss](),
                optimizer=OPTIMIZERS[self.optimizer](lr=self.lr),
                step_scale=None if self.lr_decay == 1.0 else Linear(1.0, self.lr_decay),
                warm_steps=self.warm_steps, patience=self.patience or None,
                step_search=MarginStepSearch() if self.step_search else None,
                lam_search=LamSearch(self.lam_search) if self.lam_search else None,
            )
        raise ValueError(f"unknown attack {self.attack!r}; choose pgd or adv2")


def describe(part: Any) -> Any:
    """A JSON-ready description of an attack's component (loss, optimiser, schedule, ...):
    its class name and settings, for the configuration an attack records."""
    if part is None or isinstance(part, (bool, int, float, str)):
        return part
    if isinstance(part, (tuple, list)):
        return [describe(p) for p in part]
    if is_dataclass(part):
        return {"name": type(part).__name__,
                **{f.name: describe(getattr(part, f.name)) for f in fields(part)}}
    settings = {k: describe(v) for k, v in vars(part).items()
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))}
    return {"name": type(part).__name__, **settings}
