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

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from adv2.attacks.criteria import Criterion, TargetPredicted
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import MapLoss, PredictionLoss
from adv2.attacks.optimizers import Optimizer
from adv2.attacks.schedules import Schedule
from adv2.attacks.step_search import MarginStepSearch
from adv2.attacks.support import lattice_bound
from adv2.interpreters import Interpreter, Verification
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
class Stop:
    """Per-sample stopping rule, checked after each judgement.

    ``on_success``: stop as soon as the criterion holds (a warm start). Otherwise, with a map
    loss, stop a successful sample once its best interpretation distance has not improved by a
    relative ``min_gain`` for ``patience`` judgements.
    """

    on_success: bool = False
    patience: int | None = None
    min_gain: float = 1e-3


@dataclass
class Judgement:
    """One judgement of iterates, as an observer of :func:`descend` sees it.

    ``rows``: the judged images' indices in the batch and ``x`` their (quantised) iterates;
    ``success`` (bool), ``distance`` (the map loss; 0 without one) and ``passes`` (spent so far
    in this descent) per judged image; ``maps``: the true maps when the interpreter verified
    them, None when the step's own values were judged.
    """

    step: int
    rows: torch.Tensor
    x: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    passes: torch.Tensor
    maps: torch.Tensor | None


@dataclass
class Best:
    """Per-image state of one descent: the kept iterate and its distance, whether one was
    found, how long it has been stale, whether the last judged iterate failed, passes spent,
    and the distance of the first judged iterate (the start; inf if it failed, nan before)."""

    chosen: torch.Tensor
    found: torch.Tensor
    distance: torch.Tensor
    stale: torch.Tensor
    failed: torch.Tensor
    passes: torch.Tensor
    first: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> Best:
        n = x.shape[0]
        flags = torch.zeros(n, dtype=torch.bool, device=x.device)
        return cls(x.clone(), flags, torch.full((n,), math.inf, device=x.device),
                   torch.zeros(n, dtype=torch.long, device=x.device), ~flags,
                   torch.zeros(n, dtype=torch.long, device=x.device),
                   torch.full((n,), math.nan, device=x.device))

    def keep_best(self, rows: torch.Tensor, xs: torch.Tensor, ok: torch.Tensor,
                  distance: torch.Tensor, min_gain: float) -> None:
        """Keep each successful iterate that beats its image's best distance."""
        first = self.first[rows]
        self.first[rows] = torch.where(first.isnan(), torch.where(ok, distance, math.inf),
                                       first)
        better = ok & (distance < self.distance[rows])
        gain = better & (distance < self.distance[rows] * (1 - min_gain))
        self.stale[rows] = torch.where(gain, 0, self.stale[rows] + 1)
        self.distance[rows] = torch.where(better, distance, self.distance[rows])
        self.found[rows] |= ok
        self.failed[rows] = ~ok
        self.chosen[rows[better]] = xs[better]

    def keep_last(self, rows: torch.Tensor, xs: torch.Tensor, ok: torch.Tensor) -> None:
        """Keep the last iterate (no map loss)."""
        self.chosen[rows] = xs
        self.found[rows] = ok


@dataclass
class Trajectory:
    """What one run of :func:`descend` leaves: the selected iterates and the cost."""

    x: torch.Tensor  # float N×3×H×W on the uint8 lattice
    found: torch.Tensor  # bool (N,): a successful iterate was selected
    distance: torch.Tensor  # (N,) interpretation distance of the selected iterate (inf if none)
    passes: torch.Tensor  # (N,) passes spent
    #: bool (N,): with a map loss, a successful iterate beat the start (the first judged one)
    improved: torch.Tensor | None = None


@dataclass
class Descent:
    """Minimise ``objective`` for up to ``steps`` updates per sample (see :meth:`run`).

    ``optimizer`` turns gradients into steps, ``step_scale`` (a schedule over progress)
    scales them, ``step_search`` shortens each image's step so that the target keeps winning
    (its forward passes are counted); ``observer`` is told every :class:`Judgement`.
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
        use_maps = self.objective.map_loss is not None
        if use_maps and (self.interpreter is None or target_maps is None):
            raise ValueError("a map loss needs an interpreter and target maps")
        policy = self.interpreter.verification() if use_maps else None
        bound = lattice_bound(self.eps, support)  # the largest lattice ball inside ε (·S)
        x = project(quantise(x_start), x0, bound)
        best = Best.start(x)
        active = torch.arange(x.shape[0], device=x.device)
        self.optimizer.reset(x)
        if use_maps:
            best.passes += self.interpreter.start_attack(x, targets)
        for step in range(self.steps + 1):
            if active.numel() == 0:
                break
            last = step == self.steps
            xq = quantise(x[active]).requires_grad_(not last)
            scheduled = last or (policy is not None and step % policy.every == 0)
            # verify before stepping, so that a stateful interpreter restarts from the truth
            judged = self._verify(step, xq, active, targets, target_maps, policy, best) \
                if scheduled else None
            if last:
                self._keep(best, judged, xq, active, use_maps)
                break
            logits, dist, loss = self._loss(xq, active, targets, target_maps, step, lam_scale)
            best.passes[active] += self.interpreter.passes_per_step if use_maps else 1
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
                                          target_maps, policy, best)
            done = self._keep(best, judged, xq, active, use_maps)
            (grad,) = torch.autograd.grad(loss.sum(), xq)
            keep = ~done
            rows = active[keep]  # the active set shrinks as images finish (a host sync)
            if rows.numel():
                x[rows] = self._step(x, x0, rows, grad[keep], logits.detach()[keep],
                                     targets, bound, support, step, best)
            active = rows
        if not use_maps:
            best.distance = torch.where(best.found, 0.0, math.inf)
            return Trajectory(best.chosen, best.found, best.distance, best.passes)
        return Trajectory(best.chosen, best.found, best.distance, best.passes,
                          best.distance < best.first)

    # ------------------------------------------------------------------ one step's parts
    def _progress(self, step: int) -> float:
        return step / max(self.steps, 1)

    def _loss(self, xq: torch.Tensor, active: torch.Tensor, targets: torch.Tensor,
              target_maps: torch.Tensor | None, step: int, lam_scale: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, interpretation distances and the loss at the quantised iterates."""
        t, obj = targets[active], self.objective
        if obj.map_loss is not None:
            logits, dist = self.interpreter.attack_loss(xq, t, target_maps[active], obj.map_loss,
                                                        self._progress(step), active)
            lam = obj.lam(self._progress(step)) if obj.lam is not None else 1.0
            if lam_scale is not None:
                lam = lam * lam_scale[active]
            loss = obj.pred_loss(logits, t) + lam * dist
        else:
            logits = self.model(xq)
            dist = torch.zeros(len(active), device=xq.device)
            loss = obj.pred_loss(logits, t)
        for penalty in obj.penalties:
            loss = loss + penalty(xq, logits, active)
        return logits, dist, loss

    def _verify(self, step: int, xs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                target_maps: torch.Tensor | None, policy: Verification | None,
                best: Best) -> Judgement:
        """Judge iterates ``xs`` of the batch ``rows`` with the true model and interpreter."""
        xs = xs.detach()
        with torch.no_grad():
            if self.objective.map_loss is not None:
                logits, maps, distance = self.interpreter.explain_loss(
                    xs, targets[rows], target_maps[rows], self.objective.map_loss, rows)
                if policy is not None and policy.after is not None:
                    policy.after(rows, maps)
                best.passes[rows] += self.interpreter.explain_passes
            else:
                logits, maps = self.model(xs), None
                distance = torch.zeros(len(rows), device=xs.device)
                best.passes[rows] += 1
        return self._judgement(step, rows, xs, logits, distance, targets, best, maps)

    def _judgement(self, step: int, rows: torch.Tensor, xs: torch.Tensor, logits: torch.Tensor,
                   distance: torch.Tensor, targets: torch.Tensor, best: Best,
                   maps: torch.Tensor | None) -> Judgement:
        xs = xs.detach()
        ok = self.objective.criterion(xs, logits.detach(), targets[rows], rows)
        return Judgement(step, rows, xs, ok, distance.detach(), best.passes[rows].clone(), maps)

    def _keep(self, best: Best, judged: Judgement | None, xq: torch.Tensor,
              active: torch.Tensor, use_maps: bool) -> torch.Tensor:
        """Bookkeeping of a judgement; returns which active images are done."""
        done = torch.zeros(len(active), dtype=torch.bool, device=xq.device)
        if judged is None:
            return done
        if self.observer is not None:
            self.observer(judged)
        rows, ok, xs = judged.rows, judged.success, judged.x
        if use_maps:
            best.keep_best(rows, xs, ok, judged.distance, self.stop.min_gain)
            if self.stop.patience is not None:
                done = best.found[active] & (best.stale[active] >= self.stop.patience)
        else:
            best.keep_last(rows, xs, ok)
            if self.stop.on_success:
                done = ok
        return done

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
