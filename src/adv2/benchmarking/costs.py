"""What an attack step costs: median process CPU times, an ADV² step against a PGD step, and
the unit costs of an interpreter with a fast and a generic surrogate (GRAD)."""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from adv2.attacks import MapMSE
from adv2.experiment.tables import Table
from adv2.interpreters import Interpreter, build_interpreter


def timed(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median process CPU time of each callable, the callables run interleaved (one warm-up
    round first), so that a load on the machine shifts them alike."""
    runs: dict = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            if round_:
                runs[name].append(time.process_time() - start)
    return {name: statistics.median(r) for name, r in runs.items()}


def input_grad(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    """One forward + backward of the CE loss w.r.t. the input (a PGD step's work)."""
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xg), t), xg)


def attack_step(interpreter: Interpreter, x: torch.Tensor, t: torch.Tensor,
                target_maps: torch.Tensor) -> None:
    """One ADV² step's work: the attack loss at x and its gradient w.r.t. x (after
    :meth:`~adv2.interpreters.Interpreter.start_attack`)."""
    xg = x.clone().requires_grad_(True)
    logits, dist = interpreter.attack_loss(xg, t, target_maps, MapMSE(), 0.5)
    loss = F.cross_entropy(logits, t) + dist.mean()
    torch.autograd.grad(loss, xg)


def step_cost(model: torch.nn.Module, interpreter: Interpreter, x: torch.Tensor,
              t: torch.Tensor, target_maps: torch.Tensor, repeats: int = 5) -> float:
    """Median time of one ADV² step over one PGD step on the same batch (the attack started
    once, at x, before the timing)."""
    interpreter.start_attack(x, t, clean=x)
    times = timed({"pgd": lambda: input_grad(model, x, t),
                   "adv2": lambda: attack_step(interpreter, x, t, target_maps)}, repeats)
    return times["adv2"] / times["pgd"]


def hvp(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    """A Hessian-vector product of the CE loss w.r.t. the input by double backpropagation,
    ∇ₓ⟨∇ₓℓ, v⟩ with a fixed v (the shape of the second-order work of a GRAD step)."""
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(net(xg), t, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg, create_graph=True)
    torch.autograd.grad((g * x).sum(), xg)


def chooses_surrogate(interpreter: Interpreter) -> bool:
    """Whether the interpreter's class takes ``fast`` (its fast surrogate, or with ``False`` the
    generic SmoothReLU one), as GRAD does: what :func:`surrogate_unit_costs` compares."""
    return "fast" in inspect.signature(type(interpreter)).parameters


def surrogate_unit_costs(interpreter: Interpreter, x: torch.Tensor, t: torch.Tensor,
                         target_maps: torch.Tensor, settings: dict,
                         repeats: int = 5) -> Table:
    """The unit costs of an interpreter that :func:`chooses_surrogate`
    (explain, an attack step with the fast and the generic surrogate, double-backprop HVPs)
    in forward + backward units at batch 1 and len(x), built as ``interpreter`` was with
    ``settings``.

    Shape:
        x N×3×H×W, t (N,), target_maps N×1×h×w.
    """
    model, what = interpreter.model, type(interpreter).__name__
    fast = build_interpreter(interpreter.name, model, **settings)
    generic = build_interpreter(interpreter.name, model, **{**settings, "fast": False})
    rows = [("forward, no grad", lambda xb, tb, mb: _no_grad(model, xb)),
            ("forward + backward (CE w.r.t. the input; one PGD step)",
             lambda xb, tb, mb: input_grad(model, xb, tb)),
            (f"{what} explain (true saliency)", lambda xb, tb, mb: fast.explain(xb, tb)),
            (f"{what} attack step, fast surrogate"
             + ("" if fast.fast else " (fell back: generic)"),
             lambda xb, tb, mb: attack_step(fast, xb, tb, mb)),
            (f"{what} attack step, generic SmoothReLU surrogate",
             lambda xb, tb, mb: attack_step(generic, xb, tb, mb)),
            ("HVP (double backprop), true model", lambda xb, tb, mb: hvp(model, xb, tb))]
    if fast.fast is not None:
        rows.append(("HVP (double backprop), fast surrogate (smooth mode)",
                     lambda xb, tb, mb: _fast_hvp(fast, xb, tb)))
    columns = []
    for k in sorted({1, len(x)}):
        xb, tb, mb = x[:k], t[:k], target_maps[:k]
        for started in (fast, generic):
            started.start_attack(xb, tb, clean=xb)
        times = timed({name: (lambda fn=fn, xb=xb, tb=tb, mb=mb: fn(xb, tb, mb))
                       for name, fn in rows}, repeats)
        unit = times[rows[1][0]]
        columns.append((k, {name: v / unit for name, v in times.items()}, unit))
    header = ["what", *(f"batch {k}" for k, _, _ in columns)]
    table = Table("unit-costs", f"{what} unit costs", header, [""] * len(header), aligned=False)
    table.rows = [[name, *(f"{c[name]:.2f}" for _, c, _ in columns)] for name, _ in rows]
    table.rows.append(["(one forward + backward, ms per batch)",
                       *(f"{1000 * u:.1f}" for _, _, u in columns)])
    return table


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _fast_hvp(interpreter: Interpreter, x: torch.Tensor, t: torch.Tensor) -> None:
    xg = x.clone().requires_grad_(True)
    _, _, smooth = interpreter.fast(xg, t, interpreter.beta(0.5))
    torch.autograd.grad((smooth * x).sum(), xg)
