"""The one attack loop: projected first-order descent in the L∞ ball on the uint8 lattice.

Each step evaluates the loss at the *quantised* iterate q(x) (straight-through: the gradient at
q(x) updates the continuous x), so the logits and maps the step computes anyway are those of a
valid uint8 image, and bookkeeping (success, interpretation distance, best iterate) costs no
extra pass. With sign steps of 1/255 the iterate never leaves the lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import MapLoss, PredictionLoss
from adv2.attacks.optimizers import Optimizer
from adv2.attacks.schedules import Schedule
from adv2.attacks.step_search import MarginStepSearch
from adv2.interpreters import Interpreter
from adv2.metrics import margin


@dataclass
class Objective:
    """ℓ_prd(f(x), t) + λ(p)·ℓ_int(g(x; t), m_t) + Σ penalties; ``map_loss`` None means
    prediction only.

    A penalty is called as ``penalty(x, logits, rows)`` with the evaluated (quantised) iterates
    x (n×3×H×W, differentiable), their logits (n×C) and ``rows`` (n,), the indices of these
    iterates in the attacked batch (for per-sample references); it returns (n,) losses. Used
    e.g. by attacks that must also evade a detector.
    """

    pred_loss: PredictionLoss
    map_loss: MapLoss | None = None
    lam: Schedule | None = None
    penalties: tuple[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], ...] = ()
    #: extra condition an iterate must meet to count as successful, same arguments, (n,) bool
    accept: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class Stop:
    """Per-sample stopping rule, checked after each evaluation.

    ``on_success``: stop as soon as the target is predicted with probability ≥ ``min_confidence``
    (a warm start). Otherwise, with a map loss, stop a successful sample once its best
    interpretation distance is ≤ ``tol`` or has not improved by a relative ``min_gain`` for
    ``patience`` evaluations.
    """

    on_success: bool = False
    min_confidence: float = 0.0
    tol: float = 0.0
    patience: int | None = None
    min_gain: float = 1e-3


@dataclass
class Trajectory:
    """What one run of :func:`descend` leaves: the selected iterates and the cost."""

    x: torch.Tensor  # float N×3×H×W on the uint8 lattice
    found: torch.Tensor  # bool (N,): a successful iterate was selected
    distance: torch.Tensor  # (N,) interpretation distance of the selected iterate (inf if none)
    passes: torch.Tensor  # (N,) passes spent
    history: list[dict]


def descend(
    x0: torch.Tensor,
    x_start: torch.Tensor,
    targets: torch.Tensor,
    model: torch.nn.Module,
    objective: Objective,
    optimizer: Optimizer,
    steps: int,
    eps: float,
    stop: Stop,
    interpreter: Interpreter | None = None,
    target_maps: torch.Tensor | None = None,
    record_history: bool = False,
    step_scale: Schedule | None = None,
    step_search: MarginStepSearch | None = None,
) -> Trajectory:
    """Minimise ``objective`` from ``x_start`` for up to ``steps`` updates per sample.

    Selection: with a map loss, the successful evaluated iterate of lowest interpretation
    distance (under the true interpreter); without one, the last evaluated iterate. x0,
    x_start: N×3×H×W in [0,1] on the uint8 lattice; targets: (N,) long. When the
    interpreter's attack values are not its true maps (``attack_values_exact`` False, MASK),
    iterates are judged with :meth:`Interpreter.explain` every ``interpreter.verify_every``
    steps, and also as soon as an image whose last judged iterate failed succeeds again (and
    passes ``objective.accept``); patience counts these verifications. ``step_search`` shortens
    each image's update so that the target keeps winning (its forward passes are counted).
    """
    use_maps = objective.map_loss is not None
    if use_maps and (interpreter is None or target_maps is None):
        raise ValueError("a map loss needs an interpreter and target maps")
    eps = math.floor(eps * 255 + 1e-6) / 255  # the largest ball on the uint8 lattice inside ε
    exact = not use_maps or interpreter.attack_values_exact
    verify_every = 1 if exact else interpreter.verify_every
    cost = interpreter.passes_per_step if use_maps else 1
    n = x0.shape[0]
    x = project(quantise(x_start), x0, eps)
    chosen = x.clone()
    found = torch.zeros(n, dtype=torch.bool)
    best = torch.full((n,), float("inf"))
    stale = torch.zeros(n, dtype=torch.long)
    failed = torch.ones(n, dtype=torch.bool)  # the last judged iterate failed (or none yet)
    passes = torch.zeros(n, dtype=torch.long)
    active = torch.arange(n)
    optimizer.reset(x)
    if use_maps:
        passes += interpreter.start_attack(x, targets)
    history: list[dict] = []

    def accepted(xs: torch.Tensor, logits: torch.Tensor, t: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the target wins with enough confidence and ``objective.accept`` holds."""
        probs = logits.softmax(dim=1)
        ok = (probs.argmax(dim=1) == t) & (probs.gather(1, t.view(-1, 1)).squeeze(1)
                                           >= stop.min_confidence)
        if objective.accept is not None:
            with torch.no_grad():
                ok &= objective.accept(xs.detach(), logits, rows)
        return ok

    def verify(xs: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """True logits and interpretation distances of iterates xs of the batch rows ``rows``."""
        with torch.no_grad():
            if use_maps:
                v_logits, maps = interpreter.explain(xs.detach(), targets[rows])
                distance = objective.map_loss(maps, target_maps[rows])
                if not exact:
                    interpreter.sync(rows, maps)
            else:
                v_logits, distance = model(xs.detach()), torch.zeros(len(rows))
        passes[rows] += interpreter.explain_passes if use_maps else 1
        return v_logits, distance

    for step in range(steps + 1):
        if active.numel() == 0:
            break
        progress = step / max(steps, 1)
        last = step == steps
        xq = quantise(x[active]).requires_grad_(not last)
        t = targets[active]
        # judged: which of the active iterates the true model and interpreter judged this step,
        # with their logits and interpretation distances
        judged: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if last or (not exact and step % verify_every == 0):
            # verify before stepping, so that a stateful interpreter restarts from the truth
            everyone = torch.ones(len(active), dtype=torch.bool)
            judged = (everyone, *verify(xq, active))
        loss = None
        if not last:  # the attack's loss and gradient at the quantised iterate
            if use_maps:
                logits, dist = interpreter.attack_loss(xq, t, target_maps[active],
                                                       objective.map_loss, progress, active)
                lam = objective.lam(progress) if objective.lam is not None else 1.0
                loss = objective.pred_loss(logits, t) + lam * dist
            else:
                logits = model(xq)
                dist = torch.zeros(len(active))
                loss = objective.pred_loss(logits, t)
            for penalty in objective.penalties:
                loss = loss + penalty(xq, logits, active)
            passes[active] += cost
            if exact:
                judged = torch.ones(len(active), dtype=torch.bool), logits, dist
            elif judged is None:
                # an image whose last judged iterate failed is judged again as soon as its
                # iterate succeeds (and passes ``accept``), not only at the next scheduled step
                newly = accepted(xq, logits.detach(), t, active) & failed[active]
                if newly.any():
                    judged = (newly, *verify(xq[newly], active[newly]))

        done = torch.zeros(len(active), dtype=torch.bool)
        if judged is not None:  # bookkeeping on the evaluated (quantised) iterates
            sel, j_logits, dist = (v.detach() for v in judged)
            rows_j = active[sel]
            ok = accepted(xq[sel], j_logits, t[sel], rows_j)
            if use_maps:
                better = ok & (dist < best[rows_j])
                gain = better & (dist < best[rows_j] * (1 - stop.min_gain))
                stale[rows_j] = torch.where(gain, 0, stale[rows_j] + 1)
                best[rows_j] = torch.where(better, dist, best[rows_j])
                found[rows_j] |= ok
                failed[rows_j] = ~ok
                chosen[rows_j[better]] = xq.detach()[sel][better]
                done = found[active] & (best[active] <= stop.tol)
                if stop.patience is not None:
                    done |= found[active] & (stale[active] >= stop.patience)
            else:
                chosen[active] = xq.detach()
                found[active] = ok
                done = ok if stop.on_success else done
            if record_history:
                history.append({
                    "step": step, "active": int(active.numel()), "judged": int(sel.sum()),
                    "loss": float(loss.detach().mean()) if loss is not None else None,
                    "map_distance": float(dist.mean()), "success": float(ok.float().mean()),
                })
        if last:
            break
        (grad,) = torch.autograd.grad(loss.sum(), xq)
        keep = ~done
        rows = active[keep]
        if rows.numel():
            update = optimizer.step(grad[keep], rows)
            if step_scale is not None:
                update = update * step_scale(progress)
            if step_search is not None:
                update, spent = step_search(
                    model, x[rows], update, lambda c, i: quantise(project(c, x0[rows[i]], eps)),
                    targets[rows], margin(logits.detach()[keep], t[keep]))
                passes[rows] += spent
            x[rows] = project(x[rows] - update, x0[rows], eps)
        active = rows
    if not use_maps:
        best = torch.where(found, 0.0, float("inf"))
    return Trajectory(chosen, found, best, passes, history)
