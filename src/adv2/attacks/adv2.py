"""ADV²: fool the classifier and the interpreter at once (Zhang et al., USENIX Security 2020)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Callable

import numpy as np
import torch

from adv2.attacks.engine import Objective, Stop, descend
from adv2.attacks.losses import CrossEntropy, MapLoss, MapMSE, PredictionLoss
from adv2.attacks.optimizers import Optimizer, SignStep
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, judge
from adv2.attacks.schedules import Linear, Schedule
from adv2.attacks.step_search import MarginStepSearch
from adv2.data import to_tensor, to_uint8
from adv2.interpreters import Interpreter


@dataclass
class ADV2:
    """min ℓ_prd(f(x), t) + λ·ℓ_int(g(x; t), m_t) in the ε-ball, warm-started by targeted PGD.

    ``step_scale`` (a schedule over progress) decays the optimiser's step; ``penalties`` are
    extra per-sample loss terms of the joint stage (see :class:`~adv2.attacks.engine.Objective`);
    ``step_search`` shortens each image's joint-stage step so the target keeps winning.
    Stage 1 runs up to ``warm_steps`` PGD steps, stopping each image once p(t) ≥
    ``warm_confidence``. Stage 2 runs up to ``steps`` joint steps with ``optimizer``; each image
    keeps its successful iterate of lowest interpretation distance under the true interpreter on
    the uint8 image, and stops once that distance is ≤ ``tol`` or stale for ``patience`` steps.
    The call is pure: ``ADV2(...)(images, targets, target_maps)`` with uint8 images N×H×W×3,
    targets (N,) and target maps N×1×h×w in [0,1] at the interpreter's resolution.
    """

    model: torch.nn.Module
    interpreter: Interpreter
    _: KW_ONLY
    eps: float = 8 / 255
    steps: int = 100
    lam: Schedule = field(default_factory=lambda: Linear(5.0, 10.0))
    pred_loss: PredictionLoss = field(default_factory=CrossEntropy)
    map_loss: MapLoss = field(default_factory=MapMSE)
    optimizer: Optimizer = field(default_factory=SignStep)
    step_scale: Schedule | None = None
    step_search: MarginStepSearch | None = None
    penalties: tuple = ()
    accept: Callable | None = None
    warm_steps: int = 50
    warm_confidence: float = 0.5
    tol: float = 0.0
    patience: int | None = 20
    record_history: bool = False

    def __call__(
        self, images: np.ndarray, targets: torch.Tensor, target_maps: torch.Tensor
    ) -> AttackResult:
        x0 = to_tensor(images)
        warm = PGD(self.model, eps=self.eps, steps=self.warm_steps, stop_on_success=True,
                   min_confidence=self.warm_confidence, loss=self.pred_loss).run(x0, targets)
        joint = descend(
            x0, warm.x, targets, self.model,
            Objective(self.pred_loss, self.map_loss, self.lam, self.penalties, self.accept),
            self.optimizer,
            self.steps, self.eps,
            Stop(tol=self.tol, patience=self.patience),
            self.interpreter, target_maps, self.record_history, self.step_scale,
            self.step_search,
        )
        return judge(to_uint8(joint.x), images, targets, self.model, warm.passes + joint.passes,
                     self.interpreter, target_maps, history=joint.history)
