"""Per-example step-length search: shorten an update until the target class still leads.

The ADV² authors' MASK attack bisects the step along the interpretation gradient and keeps the
largest one whose margin passes the test, but the test is on the margin *summed over the
batch*, so one image with a large margin lets the others lose the target. Here every image gets
its own step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from adv2.metrics import margin


@dataclass
class MarginStepSearch:
    """For each image, the largest fraction s ∈ [0, 1] of its update such that the quantised,
    projected candidate keeps the target's logit margin z_t − max_{j≠t} z_j ≥ ``kappa``: s = 1
    when the full step passes, else ``bisections`` halvings of [0, 1] keep the largest passing
    fraction found (0 when none). Images whose current iterate fails the test take the full
    step, so the prediction loss can bring them back. Each candidate costs one forward pass."""

    kappa: float = 1.0
    bisections: int = 3

    def __call__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        update: torch.Tensor,
        place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        targets: torch.Tensor,
        current_margin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled updates (n×3×H×W) and forward passes spent per image (n,).

        x: current iterates n×3×H×W; update: the step to subtract; ``place(candidates, rows)``
        projects and quantises candidates for images ``rows`` (indices into x) the way the
        engine will; current_margin: (n,) margins of the current iterates."""
        n = x.shape[0]
        shape = (-1,) + (1,) * (x.dim() - 1)

        def passes(s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            candidate = place(x[rows] - s.view(shape) * update[rows], rows)
            with torch.no_grad():
                return margin(model(candidate), targets[rows]) >= self.kappa

        scale = torch.ones(n, device=x.device)
        spent = torch.zeros(n, dtype=torch.long, device=x.device)
        rows = torch.nonzero(current_margin >= self.kappa).squeeze(1)
        if rows.numel():
            full = passes(torch.ones(rows.numel(), device=x.device), rows)
            spent[rows] += 1
            rows = rows[~full]
        lo = torch.zeros(rows.numel(), device=x.device)
        hi = torch.ones(rows.numel(), device=x.device)
        for _ in range(self.bisections if rows.numel() else 0):
            mid = (lo + hi) / 2
            ok = passes(mid, rows)
            spent[rows] += 1
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        scale[rows] = lo
        return update * scale.view(shape), spent
