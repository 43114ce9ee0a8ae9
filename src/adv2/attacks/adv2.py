"""ADV²: fool the classifier and the interpreter at once (Zhang et al., USENIX Security 2020)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable

import torch

from adv2 import target_maps as target_maps_mod
from adv2.attacks.criteria import Criterion, TargetPredicted
from adv2.attacks.engine import Descent, Objective, Penalty
from adv2.attacks.iterates import Judgement, Stop
from adv2.attacks.lam_search import LamSearch
from adv2.attacks.losses import (MAP_LOSSES, PREDICTION_LOSSES, CrossEntropy, MapLoss, MapMSE,
                                 PredictionLoss)
from adv2.attacks.optimizers import OPTIMIZERS, Optimizer, SignStep
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, Images, as_batch, home_of, judge
from adv2.attacks.schedules import Linear, Schedule, parse_schedule
from adv2.attacks.settings import NOT_RECORDED, AttackSettings, recorded
from adv2.attacks.step_search import MarginStepSearch
from adv2.interpreters import Interpreter
from adv2.interpreters.plugins import require_differentiable
from adv2.models import device_of


@dataclass
class ADV2:
    """min ℓ_prd(f(x), t) + λ·ℓ_int(g(x; t), m_t) in the ε-ball, warm-started by targeted PGD.

    Stage 1 runs up to ``warm_steps`` PGD steps, stopping each image once p(t) ≥
    ``warm_confidence``. Stage 2 runs up to ``steps`` joint steps with ``optimizer`` (its step
    scaled by the ``step_scale`` schedule, shortened per image by ``step_search`` so the target
    keeps winning); each image keeps its successful iterate of lowest interpretation distance
    under the true interpreter on the uint8 image, and stops once it has not improved for
    ``patience`` judgements. With ``lam_search``, the joint stage is rerun from the same warm
    start with per-image λ scales and each image keeps its best successful iterate over the
    runs (:mod:`adv2.attacks.lam_search`). ``penalties`` are extra per-sample loss terms of
    the joint stage and ``criterion`` what counts as success (:mod:`adv2.attacks.criteria`);
    ``observer`` is told every judgement of the joint stage (of each of its runs).

    :meth:`for_interpreter` builds the attack ``adv2 attack`` runs for an interpreter (its
    measured defaults, ``Interpreter.attack_defaults``); the dataclass defaults here are the
    paper's sign-step attack.

    Arguments:
        model: the classifier (its device is where the attack runs); interpreter: the one to
        fool, which must be differentiable (ValueError naming it otherwise; None only to
        validate settings, as ``adv2.pipeline.build_attack(cfg, None, None)`` does). eps: the
        L∞ budget; steps, warm_steps: joint and warm-start steps; lam: the λ schedule;
        pred_loss, map_loss: ℓ_prd and ℓ_int; optimizer, step_scale, step_search: the update;
        penalties, criterion: extra loss terms and what counts as success; warm_confidence,
        patience: stopping; lam_search: reruns with per-image λ (None: one run); observer: told
        every judgement.

    Shape:
        x: float N×3×H×W in [0,1] on any device, or uint8 N×H×W×3; targets: (N,) long;
        target_maps: N×1×h×w in [0,1] at the interpreter's resolution (None: the benign map,
        the clean image's map for its predicted class); support: N×1×H×W in [0,1], where the
        perturbation may live in every stage (None: everywhere; :mod:`adv2.attacks.support`).

    Returns:
        :class:`AttackResult` on the input's device.

    Examples:
        >>> attack = ADV2.for_interpreter(model, CAM(model))  # doctest: +SKIP
        >>> result = attack(images, targets)                  # doctest: +SKIP
    """

    model: torch.nn.Module = field(metadata=NOT_RECORDED)
    interpreter: Interpreter = field(metadata=NOT_RECORDED)  # recorded last, by its config
    _: KW_ONLY
    eps: float = 8 / 255
    steps: int = 100
    lam: Schedule = field(default_factory=lambda: Linear(5.0, 10.0))
    pred_loss: PredictionLoss = field(default_factory=CrossEntropy)
    map_loss: MapLoss = field(default_factory=MapMSE)
    optimizer: Optimizer = field(default_factory=SignStep)
    step_scale: Schedule | None = None
    step_search: MarginStepSearch | None = None
    penalties: tuple[Penalty, ...] = field(default=(), metadata=NOT_RECORDED)
    criterion: Criterion = field(default_factory=TargetPredicted, metadata=NOT_RECORDED)
    warm_steps: int = 50
    warm_confidence: float = 0.5
    patience: int | None = 20
    lam_search: LamSearch | None = None
    observer: Callable[[Judgement], None] | None = field(default=None, metadata=NOT_RECORDED)

    def __post_init__(self) -> None:
        if self.interpreter is not None:
            require_differentiable(self.interpreter)

    @staticmethod
    def settings_defaults(interpreter: type[Interpreter] | Interpreter,
                          support: str) -> dict[str, Any]:
        """ADV²'s unset settings against ``interpreter``: its ``attack_defaults``, with its
        ``support_attack_defaults`` over them for a ``support`` other than ``full``."""
        confined = interpreter.support_attack_defaults if support != "full" else {}
        return {**interpreter.attack_defaults, **confined}

    @classmethod
    def from_settings(cls, settings: AttackSettings, model: torch.nn.Module,
                      interpreter: Interpreter | None) -> ADV2:
        """The ADV² that resolved ``settings`` describe (text and numbers made into its
        schedule, losses, optimiser, step scale and searches)."""
        return cls(
            model, interpreter, eps=settings.eps, steps=settings.steps,
            lam=parse_schedule(settings.lam), pred_loss=PREDICTION_LOSSES[settings.pred_loss](),
            map_loss=MAP_LOSSES[settings.map_loss](),
            optimizer=OPTIMIZERS[settings.optimizer](lr=settings.lr),
            step_scale=None if settings.lr_decay == 1.0 else Linear(1.0, settings.lr_decay),
            warm_steps=settings.warm_steps, patience=settings.patience or None,
            step_search=MarginStepSearch() if settings.step_search else None,
            lam_search=LamSearch(settings.lam_search) if settings.lam_search else None,
        )

    @classmethod
    def for_interpreter(cls, model: torch.nn.Module, interpreter: Interpreter,
                        **overrides: Any) -> ADV2:
        """The ADV² attack ``adv2 attack`` runs on ``interpreter``: its measured defaults
        (``Interpreter.attack_defaults``) with ``overrides`` (keys of
        :class:`~adv2.attacks.settings.AttackSettings`, as text and numbers: ``steps=50``,
        ``lam="5:10"``, ``optimizer="sign"``). ``support="edges"`` (any support but
        ``full``; the same as ``adv2 attack --support``) takes the interpreter's
        ``support_attack_defaults``; the support tensor itself is passed to each call."""
        settings = AttackSettings(attack="adv2", **overrides).resolved(interpreter)
        return settings.build(model, interpreter)

    def __call__(self, x: Images, targets: torch.Tensor,
                 target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        x0 = as_batch(x, device_of(self.model))
        support = None if support is None else support.to(x0.device)
        targets = targets.to(x0.device)
        if target_maps is None:
            with torch.no_grad():
                predicted = self.model(x0).argmax(dim=1)
            target_maps = target_maps_mod.benign(self.interpreter, x0, predicted)
        target_maps = target_maps.to(x0.device)
        warm = PGD(self.model, eps=self.eps, steps=self.warm_steps, stop_on_success=True,
                   min_confidence=self.warm_confidence, loss=self.pred_loss).run(x0, targets,
                                                                                 support)
        objective = Objective(self.pred_loss, map_loss=self.map_loss, lam=self.lam,
                              penalties=self.penalties, criterion=self.criterion)
        descent = Descent(self.model, objective, optimizer=self.optimizer, steps=self.steps,
                          eps=self.eps, stop=Stop(patience=self.patience),
                          interpreter=self.interpreter, step_scale=self.step_scale,
                          step_search=self.step_search, observer=self.observer)
        if self.lam_search is None:
            joint = descent.run(x0, warm.x, targets, target_maps, support)
        else:
            joint = self.lam_search(descent, x0, warm.x, targets, target_maps, support)
        return judge(joint.x, x0, targets, self.model, warm.passes + joint.passes,
                     self.interpreter, target_maps, criterion=self.criterion).to(home_of(x))

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        return {"attack": "adv2", **recorded(self), "interpreter": self.interpreter.config()}
