"""The one attack loop: projected first-order descent in the L∞ ball on the uint8 lattice.

Each step evaluates the loss at the *quantised* iterate q(x) (straight-through: the gradient at
q(x) updates the continuous x), so the logits and maps the step computes anyway are those of a
valid uint8 image, and bookkeeping (success, interpretation distance, best iterate) costs no
extra pass. With sign steps of 1/255 the iterate never leaves the lattice.

The engine knows no interpreter: one whose attack values are not its true maps says how to
judge its iterates through :meth:`~adv2.interpreters.Interpreter.verification`. Every tensor
the loop makes takes its device from the images it attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from adv2.attacks.criteria import Criterion, TargetPredicted
from adv2.attacks.iterates import Best, Judgement, Stop, Trajectory
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import MapLoss, PredictionLoss
from adv2.attacks.map_side import InterpreterMaps, MapSide, PredictionOnly
from adv2.attacks.optimizers import Optimizer
from adv2.attacks.schedules import Schedule
from adv2.attacks.step_search import MarginStepSearch
from adv2.attacks.support import lattice_bound
from adv2.interpreters import Interpreter
from adv2.metrics import margin

#: ``penalty(x, logits, rows) -> (n,)`` extra loss terms (see :class:`Objective`)
Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Objective:
    """ℓ_prd(f(x), t) + λ(p)·ℓ_int(g(x; t), m_t) + Σ penalties; ``map_loss`` None means
    prediction only.

    A penalty is called as ``penalty(x, logits, rows)`` with the evaluated (quantised) iterates
    x (n×3×H×W, differentiable), their logits (n×C) and ``rows`` (n,), the indices of these
    iterates in the attacked batch (for per-sample references); it returns (n,) losses. Used
    e.g. by attacks that must also evade a detector. ``criterion`` says which iterates count as
    successful (:mod:`adv2.attacks.criteria`).
    """

    pred_loss: PredictionLoss
    map_loss: MapLoss | None = None
    lam: Schedule | None = None
    penalties: tuple[Penalty, ...] = ()
    criterion: Criterion = field(default_factory=TargetPredicted)


@dataclass
class Descent:
    """Minimise ``objective`` for up to ``steps`` updates per sample (see :meth:`run`).

    ``optimizer`` turns gradients into steps, ``step_scale`` (a schedule over progress)
    scales them, ``step_search`` shortens each image's step so that the target keeps winning
    (its forward passes are counted); ``observer`` is told every :class:`Judgement`. The
    objective's map loss chooses the map side once (:mod:`adv2.attacks.map_side`): none is
    the prediction alone (PGD); one needs ``interpreter`` (a ValueError otherwise).
    """

    model: torch.nn.Module
    objective: Objective
    optimizer: Optimizer
    steps: int
    eps: float
    stop: Stop = field(default_factory=Stop)
    interpreter: Interpreter | None = None
    step_scale: Schedule | None = None
    step_search: MarginStepSearch | None = None
    observer: Callable[[Judgement], None] | None = None
    side: MapSide = field(init=False, repr=False)

    def __post_init__(self) -> None:
        obj = self.objective
        self.side = PredictionOnly(self.model, obj.pred_loss) if obj.map_loss is None \
            else InterpreterMaps(self.interpreter, obj.pred_loss, obj.map_loss, obj.lam)

    def run(self, x0: torch.Tensor, x_start: torch.Tensor, targets: torch.Tensor,
            target_maps: torch.Tensor | None = None,
            support: torch.Tensor | None = None,
            lam_scale: torch.Tensor | None = None) -> Trajectory:
        """Descend from ``x_start`` around ``x0`` (N×3×H×W in [0,1] on the uint8 lattice)
        toward ``targets`` (N,) and, with a map loss, ``target_maps`` (N×1×h×w). A
        ``support`` (N×1×H×W in [0,1], :mod:`adv2.attacks.support`) multiplies every update
        and bounds the perturbation: |δ| ≤ ε·S per pixel on the lattice. ``lam_scale`` (N,)
        multiplies each image's λ (:mod:`adv2.attacks.lam_search`).

        Selection: with a map loss, the successful judged iterate of lowest interpretation
        distance (under the true interpreter); without one, the last judged iterate. An
        interpreter whose :meth:`~Interpreter.verification` is not None has its iterates
        judged with :meth:`~Interpreter.explain_loss` on that schedule; patience counts judgements.
        """
        side, policy = self.side, self.side.policy
        bound = lattice_bound(self.eps, support)  # the largest lattice ball inside ε (·S)
        x = project(quantise(x_start), x0, bound)
        best = Best.start(x)
        active = torch.arange(x.shape[0], device=x.device)
        self.optimizer.reset(x)
        best.passes += side.start(x, x0, targets, target_maps)
        for step in range(self.steps + 1):
            if active.numel() == 0:
                break
            last = step == self.steps
            xq = quantise(x[active]).requires_grad_(not last)
            scheduled = last or (policy is not None and step % policy.every == 0)
            # verify before stepping, so that a stateful interpreter restarts from the truth
            judged = self._verify(step, xq, active, targets, target_maps, best) \
                if scheduled else None
            if last:
                self._keep(best, judged, active)
                break
            logits, dist, loss = self._loss(xq, active, targets, target_maps, step, lam_scale)
            best.passes[active] += side.passes_per_step
            if policy is None:  # the step's own values are the true ones: judged for free
                judged = self._judgement(step, active, xq, logits, dist, targets, best, None)
            elif judged is None and policy.on_success:
                # an image whose last judged iterate failed is judged again as soon as its
                # iterate succeeds, not only at the next scheduled step (a host sync, MASK only)
                t = targets[active]
                newly = self.objective.criterion(xq, logits.detach(), t, active) \
                    & best.failed[active]
                if newly.any():
                    judged = self._verify(step, xq[newly], active[newly], targets,
                                          target_maps, best)
            done = self._keep(best, judged, active)
            (grad,) = torch.autograd.grad(loss.sum(), xq)
            keep = ~done
            rows = active[keep]  # the active set shrinks as images finish (a host sync)
            if rows.numel():
                x[rows] = self._step(x, x0, rows, grad[keep], logits.detach()[keep],
                                     targets, bound, support, step, best)
            active = rows
        return side.leave(best)

    # ------------------------------------------------------------------ one step's parts
    def _progress(self, step: int) -> float:
        return step / max(self.steps, 1)

    def _loss(self, xq: torch.Tensor, active: torch.Tensor, targets: torch.Tensor,
              target_maps: torch.Tensor | None, step: int, lam_scale: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, interpretation distances and the loss at the quantised iterates."""
        logits, dist, loss = self.side.evaluate(xq, active, targets, target_maps,
                                                self._progress(step), lam_scale)
        for penalty in self.objective.penalties:
            loss = loss + penalty(xq, logits, active)
        return logits, dist, loss

    def _verify(self, step: int, xs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                target_maps: torch.Tensor | None, best: Best) -> Judgement:
        """Judge iterates ``xs`` of the batch ``rows`` with the true model and interpreter."""
        xs = xs.detach()
        with torch.no_grad():
            logits, maps, distance, spent = self.side.verify(xs, rows, targets, target_maps)
            best.passes[rows] += spent
        return self._judgement(step, rows, xs, logits, distance, targets, best, maps)

    def _judgement(self, step: int, rows: torch.Tensor, xs: torch.Tensor, logits: torch.Tensor,
                   distance: torch.Tensor, targets: torch.Tensor, best: Best,
                   maps: torch.Tensor | None) -> Judgement:
        xs = xs.detach()
        ok = self.objective.criterion(xs, logits.detach(), targets[rows], rows)
        return Judgement(step, rows, xs, ok, distance.detach(), best.passes[rows].clone(), maps)

    def _keep(self, best: Best, judged: Judgement | None, active: torch.Tensor) -> torch.Tensor:
        """Bookkeeping of a judgement; returns which active images are done."""
        if judged is None:
            return torch.zeros_like(active, dtype=torch.bool)
        if self.observer is not None:
            self.observer(judged)
        return self.side.keep(best, judged, active, self.stop)

    def _step(self, x: torch.Tensor, x0: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
              logits: torch.Tensor, targets: torch.Tensor, bound: float | torch.Tensor,
              support: torch.Tensor | None, step: int, best: Best) -> torch.Tensor:
        """The next iterates of ``rows``: optimiser step, scale, support, step search,
        projection."""
        update = self.optimizer.step(grad, rows)
        if self.step_scale is not None:
            update = update * self.step_scale(self._progress(step))
        bound = bound[rows] if isinstance(bound, torch.Tensor) else bound
        if support is not None:
            update = update * support[rows]
        if self.step_search is not None:
            update, spent = self.step_search(
                self.model, x[rows], update,
                lambda c, i: quantise(project(c, x0[rows[i]],
                                              bound[i] if support is not None else bound)),
                targets[rows], margin(logits, targets[rows]))
            best.passes[rows] += spent
        return project(x[rows] - update, x0[rows], bound)
