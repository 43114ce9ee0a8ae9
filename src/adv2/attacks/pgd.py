"""Targeted PGD (the baseline and ADV²'s warm start)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import numpy as np
import torch

from adv2.attacks.engine import Objective, Stop, Trajectory, descend
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import CrossEntropy, PredictionLoss
from adv2.attacks.optimizers import SignStep
from adv2.attacks.result import AttackResult, judge
from adv2.data import to_tensor, to_uint8
from adv2.interpreters import Interpreter


@dataclass
class PGD:
    """Targeted L∞ PGD: ``steps`` sign steps of ``step_size`` on ``loss`` toward the target.

    ``random_start`` draws the start uniformly in the ε-ball from ``torch.Generator(seed)``.
    ``stop_on_success`` stops each image once p(target) ≥ ``min_confidence`` and argmax = target.
    Calling it on uint8 images N×H×W×3 returns an :class:`AttackResult`.
    """

    model: torch.nn.Module
    _: KW_ONLY
    eps: float = 8 / 255
    step_size: float = 1 / 255
    steps: int = 100
    random_start: bool = False
    seed: int = 0
    stop_on_success: bool = False
    min_confidence: float = 0.0
    loss: PredictionLoss = field(default_factory=CrossEntropy)

    def run(self, x0: torch.Tensor, targets: torch.Tensor) -> Trajectory:
        """Float N×3×H×W in [0,1] → the trajectory's selected iterates (on the uint8 lattice)."""
        start = x0
        if self.random_start:
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.empty(x0.shape).uniform_(-self.eps, self.eps, generator=gen)
            start = project(quantise(x0 + noise), x0, self.eps)
        return descend(
            x0, start, targets, self.model, Objective(self.loss), SignStep(self.step_size),
            self.steps, self.eps,
            Stop(on_success=self.stop_on_success, min_confidence=self.min_confidence),
        )

    def __call__(
        self,
        images: np.ndarray,
        targets: torch.Tensor,
        interpreter: Interpreter | None = None,
        target_maps: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack uint8 images; with an interpreter, judge the maps against ``target_maps``."""
        traj = self.run(to_tensor(images), targets)
        return judge(to_uint8(traj.x), images, targets, self.model, traj.passes, interpreter,
                     target_maps)
