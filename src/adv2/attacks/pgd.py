"""Targeted PGD (the baseline and ADV²'s warm start)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch

from adv2.attacks.criteria import TargetPredicted
from adv2.attacks.draws import ImageSeeds
from adv2.attacks.engine import Descent, Objective
from adv2.attacks.iterates import Stop, Trajectory
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import PREDICTION_LOSSES, CrossEntropy, PredictionLoss
from adv2.attacks.optimizers import SignStep
from adv2.attacks.result import AttackResult, Images, as_batch, home_of, judge
from adv2.attacks.settings import NOT_RECORDED, AttackSettings, recorded
from adv2.attacks.support import lattice_bound
from adv2.interpreters import Interpreter
from adv2.models import device_of

#: targeted PGD: 100 sign steps of 1/255 on the cross entropy
PGD_DEFAULTS: dict[str, Any] = {"steps": 100, "optimizer": "sign", "lr": 1 / 255,
                                "pred_loss": "ce"}


@dataclass
class PGD(ImageSeeds):
    """Targeted L∞ PGD: ``steps`` sign steps of ``step_size`` on ``loss`` toward the target.

    Arguments:
        model: the classifier (its device is where the attack runs).
        interpreter: the interpreter the results are judged with (maps, L1, IoU); None
            judges the prediction only.
        eps: the L∞ budget; step_size: the sign step; steps: the number of steps.
        random_start: start uniformly in the ε-ball, each image from its own seed
            (:meth:`use_seeds`; ``seed`` for every image unless set).
        stop_on_success: stop each image once the target wins with p(target) ≥
            ``min_confidence`` (success itself is the target winning). loss: the prediction
            loss (cross entropy by default).

    Shape:
        x: float N×3×H×W in [0,1] on any device, or uint8 N×H×W×3; targets: (N,) long;
        target_maps: N×1×h×w in [0,1] at the interpreter's resolution (for judging);
        support: N×1×H×W in [0,1], where the perturbation may live (None: everywhere).

    Returns:
        :class:`AttackResult` on the input's device.

    Examples:
        >>> result = PGD(model, cam, eps=8 / 255)(images, targets, benign)  # doctest: +SKIP
    """

    model: torch.nn.Module = field(metadata=NOT_RECORDED)
    interpreter: Interpreter | None = field(default=None, metadata=NOT_RECORDED)
    _: KW_ONLY
    eps: float = 8 / 255
    step_size: float = 1 / 255
    steps: int = 100
    random_start: bool = False
    seed: int = 0
    stop_on_success: bool = field(default=False, metadata=NOT_RECORDED)  # a warm start's
    min_confidence: float = field(default=0.0, metadata=NOT_RECORDED)
    loss: PredictionLoss = field(default_factory=CrossEntropy)

    @staticmethod
    def settings_defaults(interpreter: type[Interpreter] | Interpreter,
                          support: str) -> Mapping[str, Any]:
        """PGD's unset settings against any interpreter and support: :data:`PGD_DEFAULTS`."""
        return PGD_DEFAULTS

    @classmethod
    def from_settings(cls, settings: AttackSettings, model: torch.nn.Module,
                      interpreter: Interpreter | None) -> PGD:
        """The PGD that resolved ``settings`` describe (``lr`` is its sign step); a ValueError
        for an optimizer other than ``sign``."""
        if settings.optimizer != "sign":
            raise ValueError("PGD takes sign steps; the optimizer applies to ADV² only")
        return cls(model, interpreter, eps=settings.eps, steps=settings.steps,
                   step_size=settings.lr, random_start=settings.random_start,
                   seed=settings.seed, loss=PREDICTION_LOSSES[settings.pred_loss]())

    def run(self, x0: torch.Tensor, targets: torch.Tensor,
            support: torch.Tensor | None = None) -> Trajectory:
        """Float N×3×H×W in [0,1] → the trajectory's selected iterates (on the uint8 lattice),
        on x0's device; ``support`` (N×1×H×W) confines the perturbation
        (:mod:`adv2.attacks.support`)."""
        start = x0
        if self.random_start:  # each image's own draw, on the host, so every device agrees
            noise = torch.stack([torch.empty(x0.shape[1:], device="cpu").uniform_(
                -self.eps, self.eps, generator=gen) for gen in self.generators(len(x0))]).to(x0)
            noise = noise if support is None else noise * support
            start = project(quantise(x0 + noise), x0, lattice_bound(self.eps, support))
        # with stop_on_success, an image stops once the target wins with min_confidence
        stop_rule = TargetPredicted(self.min_confidence)
        descent = Descent(self.model, Objective(self.loss, criterion=stop_rule),
                          optimizer=SignStep(self.step_size), steps=self.steps, eps=self.eps,
                          stop=Stop(on_success=self.stop_on_success))
        return descent.run(x0, start, targets, support=support)

    def __call__(self, x: Images, targets: torch.Tensor,
                 target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        """Attack ``x``; with an interpreter and ``target_maps``, judge the maps too."""
        x0 = as_batch(x, device_of(self.model))
        traj = self.run(x0, targets.to(x0.device),
                        None if support is None else support.to(x0.device))
        return judge(traj.x, x0, targets, self.model, traj.passes, self.interpreter,
                     target_maps).to(home_of(x))

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        return {"attack": "pgd", **recorded(self)}

