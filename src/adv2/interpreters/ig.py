"""Integrated Gradients (Sundararajan et al. 2017), as Captum's ``IntegratedGradients``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from adv2.interpreters.sampled import SampledGradients
from adv2.models import Classifier

#: Captum's quadrature rules
METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre")
BASELINES = ("black", "blur", "uniform")


def quadrature(method: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's step sizes (n,) and α ∈ [0,1] (n,) of ``method`` with n points."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (torch.tensor(0.5 * weights, dtype=torch.float32, device="cpu"),
                torch.tensor(0.5 * (nodes + 1), dtype=torch.float32, device="cpu"))
    if method not in METHODS:
        raise ValueError(f"unknown IG method {method!r}; choose from {METHODS}")
    if n < 2:
        raise ValueError(f"Riemann rules need at least 2 steps, got {n}")
    steps = [1 / n] * n
    if method == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
        alphas = torch.linspace(0, 1, n, device="cpu")
    elif method == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n, device="cpu")
    elif method == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, device="cpu")
    else:
        alphas = torch.linspace(1 / n, 1, n, device="cpu")
    return torch.tensor(steps, device="cpu"), alphas


class IG(SampledGradients):
    """Integrated Gradients of the class logit: (x − b) ⊙ ∫₀¹ ∇f(b + α(x − b))[c] dα by
    ``method`` with ``steps`` points (Captum's rules and batch layout), post-processed as GRAD's
    map: |attribution|, max over channels, ``pool``×``pool`` average pooling, min–max.

    ADV² differentiates a cheaper estimate: ``attack_steps`` midpoints of the path, shifted
    along it at every step (a golden-ratio sequence), their gradients through the fast ReLU
    surrogate (:mod:`~adv2.interpreters.grad_surrogate`); the engine judges the iterate with
    the true ``steps``-point map every ``verify_every`` steps.

    Arguments:
        model: the classifier. steps: m, the quadrature points. method: Captum's
            ``riemann_left|right|middle|trapezoid`` or ``gausslegendre``. baseline: ``black``
            (zeros), ``blur`` (the image under a Gaussian blur of ``blur_sigma`` pixels) or
            ``uniform`` (U(0,1) noise drawn from each image's seed). attack_steps: points per
            attack step. Others: :class:`~adv2.interpreters.sampled.SampledGradients`.

    Shape:
        x: N×3×H×W in [0,1]; classes: (N,). Maps: N×1×(H/pool)×(W/pool) in [0,1].

    Examples:
        >>> maps = IG(model, steps=50)(x, labels)  # doctest: +SKIP
    """

    name = "ig"
    attack_defaults = {"steps": 200, "warm_steps": 30, "optimizer": "adam", "lr": 0.004,
                       "lr_decay": 0.05, "lam": "50", "pred_loss": "cw", "map_loss": "mse",
                       "patience": 0, "step_search": False}

    def __init__(self, model: Classifier, steps: int = 50, method: str = "riemann_middle",
                 baseline: str = "black", blur_sigma: float = 5.0, attack_steps: int = 3,
                 seed: int = 0, pool: int = 4,
                 internal_batch_size: int | None = 8, beta_start: float = 10.0,
                 beta_end: float = 60.0, verify_every: int = 25, attack_exact: bool = False,
                 estimator: str = "mean") -> None:
        super().__init__(model, pool, internal_batch_size, beta_start, beta_end, verify_every,
                         attack_exact, estimator)
        if baseline not in BASELINES:
            raise ValueError(f"unknown IG baseline {baseline!r}; choose from {BASELINES}")
        if attack_steps < 1:
            raise ValueError(f"attack_steps must be ≥ 1, got {attack_steps}")
        if estimator == "halves" and (attack_steps < 2 or attack_steps % 2):
            raise ValueError(f"the halves estimator needs two equal groups of points, each a "
                             f"rule along the whole path: attack_steps must be ≥ 2 and even, "
                             f"got {attack_steps}")
        self.step_sizes, self.alphas = quadrature(method, steps)
        self.steps, self.method, self.baseline = steps, method, baseline
        self.blur_sigma, self.attack_steps, self.seed = blur_sigma, attack_steps, seed
        self.n_points = steps
        self.stochastic = baseline == "uniform"
        self.passes_per_step = self.attack_passes(attack_steps)
        self.explain_passes = steps + 1

    def baselines(self, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """The baseline b of each image (N×3×H×W)."""
        if self.baseline == "black":
            return torch.zeros_like(x)
        if self.baseline == "blur":
            radius = max(1, math.ceil(3 * self.blur_sigma))
            return gaussian_blur(x, [2 * radius + 1] * 2, [self.blur_sigma] * 2)
        draws = [torch.rand(x.shape[1:], device="cpu", generator=torch.Generator().manual_seed(s))
                 for s in seeds]  # on the host: the same on every device
        return torch.stack(draws).to(x)

    def points(self, x: torch.Tensor, seeds: list[int], lo: int, hi: int) -> torch.Tensor:
        b = self.baselines(x, seeds)
        return torch.stack([b + a * (x - b) for a in self.alphas[lo:hi].tolist()])

    def weights(self, n: int) -> torch.Tensor:
        return self.step_sizes

    def attack_points(self, x: torch.Tensor, seeds: list[int],
                      call: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.attack_steps
        shift = (0.5 + call * (math.sqrt(5) - 1) / 2) % 1.0
        b = self.baselines(x, seeds)
        # the halves estimator splits the points into a first and a second half: the even
        # and the odd points of the rule, so that each half spans the whole path
        order = [*range(0, k, 2), *range(1, k, 2)] if self.estimator == "halves" else range(k)
        pts = torch.stack([b + ((j + shift) / k) * (x - b) for j in order])
        return pts, torch.full((k,), 1.0 / k, device=x.device)

    def combine(self, x: torch.Tensor, seeds: list[int],
                averaged: torch.Tensor) -> torch.Tensor:
        return averaged * (x - self.baselines(x, seeds))

    def config(self) -> dict:
        return super().config() | {"steps": self.steps, "method": self.method,
                                   "baseline": self.baseline, "blur_sigma": self.blur_sigma,
                                   "attack_steps": self.attack_steps}
