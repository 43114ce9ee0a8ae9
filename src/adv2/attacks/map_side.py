"""The map side of a descent: what :class:`~adv2.attacks.engine.Descent` evaluates, judges
and keeps besides the prediction, chosen once when the descent is built.

:class:`PredictionOnly` (PGD, no map objective) needs no interpreter: each step's own logits
are the truth, so every step is judged for free at one pass; an image keeps its last iterate
and, with ``Stop.on_success``, stops once it succeeds. :class:`InterpreterMaps` (ADV²) holds
the interpreter and its :class:`~adv2.interpreters.Verification` (when iterates are judged
with the true interpreter); an image keeps its successful iterate of lowest interpretation
distance and stops after ``Stop.patience`` judgements without gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from adv2.attacks.iterates import Best, Judgement, Stop, Trajectory
from adv2.attacks.losses import MapLoss, PredictionLoss
from adv2.attacks.schedules import Schedule
from adv2.interpreters import Interpreter, Verification

#: (logits n×C, distances (n,), the loss before penalties (n,))
Evaluation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MapSide(Protocol):
    """What a descent asks of its map side (see the module docstring)."""

    #: how iterates are judged with the true interpreter (None: each step's values are true)
    policy: Verification | None

    @property
    def passes_per_step(self) -> int:
        """Passes per image one attack step costs."""

    def start(self, x: torch.Tensor, x0: torch.Tensor, targets: torch.Tensor,
              target_maps: torch.Tensor | None) -> int:
        """Prepare a descent from iterates ``x`` in the ball around ``x0``; returns the passes
        per image spent."""

    def evaluate(self, xq: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                 target_maps: torch.Tensor | None, progress: float,
                 lam_scale: torch.Tensor | None) -> Evaluation:
        """The differentiable step at iterates ``xq`` of the batch ``rows``."""

    def verify(self, xs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
               target_maps: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """The truth at iterates ``xs``: logits, maps (None without), distances, passes."""

    def keep(self, best: Best, judged: Judgement, active: torch.Tensor,
             stop: Stop) -> torch.Tensor:
        """Keep what ``judged`` says in ``best``; returns which ``active`` images are done."""

    def leave(self, best: Best) -> Trajectory:
        """What the descent leaves once every image is done."""


@dataclass
class PredictionOnly:
    """The prediction alone (targeted PGD): judged at every step for free, the last iterate
    kept.

    Arguments:
        model: the classifier; pred_loss: ℓ_prd.
    """

    model: torch.nn.Module
    pred_loss: PredictionLoss
    policy: Verification | None = None
    passes_per_step: int = 1

    def start(self, x: torch.Tensor, x0: torch.Tensor, targets: torch.Tensor,
              target_maps: torch.Tensor | None) -> int:
        return 0

    def evaluate(self, xq: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                 target_maps: torch.Tensor | None, progress: float,
                 lam_scale: torch.Tensor | None) -> Evaluation:
        logits = self.model(xq)
        return (logits, torch.zeros(len(rows), device=xq.device),
                self.pred_loss(logits, targets[rows]))

    def verify(self, xs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
               target_maps: torch.Tensor | None
               ) -> tuple[torch.Tensor, None, torch.Tensor, int]:
        return self.model(xs), None, torch.zeros(len(rows), device=xs.device), 1

    def keep(self, best: Best, judged: Judgement, active: torch.Tensor,
             stop: Stop) -> torch.Tensor:
        best.keep_last(judged.rows, judged.x, judged.success)
        return judged.success if stop.on_success else torch.zeros_like(active, dtype=torch.bool)

    def leave(self, best: Best) -> Trajectory:
        best.distance = torch.where(best.found, 0.0, math.inf)
        return Trajectory(best.chosen, best.found, best.distance, best.passes)


@dataclass
class InterpreterMaps:
    """ℓ_prd + λ(p)·ℓ_int through the interpreter's attack loss, judged on its
    :meth:`~adv2.interpreters.Interpreter.verification` schedule, the successful iterate of
    lowest distance kept.

    Arguments:
        interpreter: the interpreter to fool (ValueError when None); pred_loss, map_loss:
        ℓ_prd and ℓ_int; lam: the λ schedule over progress (None: 1).
    """

    interpreter: Interpreter
    pred_loss: PredictionLoss
    map_loss: MapLoss
    lam: Schedule | None
    policy: Verification | None = field(init=False)

    def __post_init__(self) -> None:
        if self.interpreter is None:
            raise ValueError("a map loss needs an interpreter and target maps")
        self.policy = self.interpreter.verification()

    @property
    def passes_per_step(self) -> int:
        return self.interpreter.passes_per_step

    def start(self, x: torch.Tensor, x0: torch.Tensor, targets: torch.Tensor,
              target_maps: torch.Tensor | None) -> int:
        if target_maps is None:
            raise ValueError("a map loss needs an interpreter and target maps")
        return self.interpreter.start_attack(x, targets, clean=x0)

    def evaluate(self, xq: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                 target_maps: torch.Tensor, progress: float,
                 lam_scale: torch.Tensor | None) -> Evaluation:
        t = targets[rows]
        logits, dist = self.interpreter.attack_loss(xq, t, target_maps[rows], self.map_loss,
                                                    progress, rows)
        lam = self.lam(progress) if self.lam is not None else 1.0
        if lam_scale is not None:
            lam = lam * lam_scale[rows]
        return logits, dist, self.pred_loss(logits, t) + lam * dist

    def verify(self, xs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
               target_maps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        logits, maps, distance = self.interpreter.explain_loss(
            xs, targets[rows], target_maps[rows], self.map_loss, rows)
        if self.policy is not None and self.policy.after is not None:
            self.policy.after(rows, maps)
        return logits, maps, distance, self.interpreter.explain_passes

    def keep(self, best: Best, judged: Judgement, active: torch.Tensor,
             stop: Stop) -> torch.Tensor:
        best.keep_best(judged.rows, judged.x, judged.success, judged.distance, stop.min_gain)
        if stop.patience is None:
            return torch.zeros_like(active, dtype=torch.bool)
        return best.found[active] & (best.stale[active] >= stop.patience)

    def leave(self, best: Best) -> Trajectory:
        return Trajectory(best.chosen, best.found, best.distance, best.passes,
                          best.distance < best.first)
