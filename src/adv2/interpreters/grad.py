"""GRAD: vanilla gradient saliency, and the smooth surrogate used to attack it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adv2.interpreters.base import Interpreter, minmax
from adv2.interpreters.grad_surrogate import FastSurrogate, beta_at
from adv2.interpreters.smooth_copy import follow, smooth_copy
from adv2.models import Classifier


class SmoothReLU(nn.Module):
    """Exact ReLU (or ReLU6) in the forward pass; softplus-β derivative in the backward pass.

    The output value is ``relu(z)`` (``clamp(z, 0, cap)``), but its derivative is
    ``σ(βz) − σ(β(z − cap))``, which is smooth, so double backpropagation sees a non-zero
    second derivative ``β σ(βz)(1 − σ(βz))``. As β → ∞ the derivative tends to ReLU's step.
    """

    def __init__(self, beta: float, cap: float | None = None) -> None:
        super().__init__()
        self.beta = beta
        self.cap = cap

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        smooth = F.softplus(z, beta=self.beta)
        exact = z.clamp(min=0)
        if self.cap is not None:
            smooth = smooth - F.softplus(z - self.cap, beta=self.beta)
            exact = exact.clamp(max=self.cap)
        return exact.detach() + (smooth - smooth.detach())


def _smooth_of(module: nn.Module, beta: float) -> SmoothReLU:
    return SmoothReLU(beta, 6.0 if isinstance(module, nn.ReLU6) else None)


def saliency(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, pool: int, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and GRAD maps: |∇_x CE(f(x), c)|, max over channels, pool×pool average pooling,
    min-max normalised. x: N×3×H×W in [0,1]; maps: N×1×(H/pool)×(W/pool) in [0,1].

    The cross-entropy is summed over the batch, so each map depends on its own image only.
    """
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = model(xg)
        loss = F.cross_entropy(logits, classes, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg, create_graph=create_graph)
    return logits, gradient_map(grad, pool)


def gradient_map(grad: torch.Tensor, pool: int) -> torch.Tensor:
    """GRAD maps of input gradients N×3×H×W: |grad|, max over channels, pool×pool average
    pooling, min-max normalised (N×1×(H/pool)×(W/pool) in [0,1])."""
    return minmax(F.avg_pool2d(grad.abs().amax(dim=1, keepdim=True), pool))


class GRAD(Interpreter):
    """Gradient saliency at 1/``pool`` resolution (56×56 for 224² with pool 4).

    Attack gradients come from a surrogate whose ReLU/ReLU6 units have the softplus-β
    derivative, β growing geometrically from ``beta_start`` to ``beta_end`` over the attack
    (10 → 60 by default, chosen on images the benchmark does not report).
    :meth:`attack_forward` returns the *true* map's value with the surrogate map's Jacobian
    (``true + (sur − sur.detach())``), so a map loss is evaluated on the true map and
    differentiated through the surrogate.

    With ``fast`` (default) and a model of :data:`~adv2.interpreters.grad_surrogate.
    SUPPORTED_LAYERS`, both maps come from one forward pass of a
    :class:`~adv2.interpreters.grad_surrogate.FastSurrogate`; otherwise (logged) from the true
    model plus a copy whose activations are :class:`SmoothReLU` (the generic surrogate).
    """

    name = "grad"
    # chosen with the fast surrogate, on images the benchmark does not report
    attack_defaults = {"steps": 400, "warm_steps": 30, "optimizer": "adam", "lr": 0.004,
                       "lr_decay": 0.05, "lam": "50", "pred_loss": "cw", "map_loss": "mse",
                       "patience": 0, "step_search": False}
    # a support leaves fewer pixels to move: twice the steps, twice the step size, λ × 10
    support_attack_defaults = {"steps": 800, "lr": 0.008, "lam": "500"}
    adaptive_lam_scale = 16.0  # adaptive ADV²'s λ multiplier
    passes_per_step = 2  # the true saliency and the surrogate's double backpropagation

    def __init__(
        self, model: Classifier, pool: int = 4, beta_start: float = 10.0, beta_end: float = 60.0,
        fast: bool = True,
    ) -> None:
        super().__init__(model)
        self.pool = pool
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.fast = FastSurrogate.build(model) if fast else None
        self.surrogate: Classifier | None = None
        self._smooth_units: list[SmoothReLU] = []
        if self.fast is None:
            self.surrogate = smooth_copy(model, lambda m: _smooth_of(m, beta_start))
            self._smooth_units = [m for m in self.surrogate.modules()
                                  if isinstance(m, SmoothReLU)]

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        return height // self.pool, width // self.pool

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return saliency(self.model, x, classes, self.pool, create_graph=x.requires_grad)

    def beta(self, progress: float) -> float:
        """Surrogate β at ``progress`` ∈ [0,1]: geometric from beta_start to beta_end."""
        return beta_at(progress, self.beta_start, self.beta_end)

    def attack_forward(
        self, x: torch.Tensor, classes: torch.Tensor, progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta(progress)
        if self.fast is not None:
            logits, true_grad, smooth_grad = self.fast(x, classes, beta)
            true_maps = gradient_map(true_grad, self.pool)
            sur_maps = gradient_map(smooth_grad, self.pool)
        else:
            for unit in self._smooth_units:
                unit.beta = beta
            _, true_maps = saliency(self.model, x.detach(), classes, self.pool,
                                    create_graph=False)
            logits, sur_maps = saliency(follow(self.surrogate, self.model), x, classes, self.pool,
                                        create_graph=True)
        return logits, true_maps + (sur_maps - sur_maps.detach())

    def config(self) -> dict:
        return {"name": self.name, "pool": self.pool, "beta_start": self.beta_start,
                "beta_end": self.beta_end}
