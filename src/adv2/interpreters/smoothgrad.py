"""SmoothGrad (Smilkov et al. 2017), as Captum's ``NoiseTunnel(Saliency)``."""

from __future__ import annotations

import numpy as np
import torch

from adv2.interpreters.sampled import SampledGradients
from adv2.models import Classifier


def gaussian_noise(seed: int, n: int, shape: tuple[int, ...], sigma: float) -> torch.Tensor:
    """n draws of N(0, σ²) noise of ``shape`` from ``seed`` (on the host: the same on every
    device)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), device="cpu", generator=gen) * sigma


class SmoothGrad(SampledGradients):
    """SmoothGrad of the class logit: the mean of |∇f(x + ε)[c]| over ``samples`` draws of
    ε ~ N(0, (σ·range)²), range = 1 for [0,1] images, each image's noise drawn from its own
    seed (:meth:`~adv2.interpreters.Interpreter.use_seeds`); Captum's ``NoiseTunnel(
    Saliency(model))`` with ``nt_type="smoothgrad"`` and ``stdevs=sigma`` on the same noise.
    Post-processed as GRAD's map: max over channels, ``pool``×``pool`` average pooling,
    min–max.

    ADV² differentiates ``attack_samples`` fresh draws per step (from the image's seed and the
    step; antithetic pairs ε, −ε with ``antithetic``) through the fast ReLU surrogate; the
    engine judges the iterate with the true ``samples``-draw map every ``verify_every`` steps.

    Arguments:
        model: the classifier. samples: n, the draws of the map. sigma: σ as a fraction of
            the input range. attack_samples: draws per attack step (even with ``antithetic``).
            seed: every image's seed until :meth:`use_seeds` sets them. Others:
            :class:`~adv2.interpreters.sampled.SampledGradients`.

    Shape:
        x: N×3×H×W in [0,1]; classes: (N,). Maps: N×1×(H/pool)×(W/pool) in [0,1].

    Examples:
        >>> sg = SmoothGrad(model, samples=50)  # doctest: +SKIP
        >>> sg.use_seeds([3, 4]); maps = sg(x[:2], labels[:2])  # doctest: +SKIP
    """

    name = "smoothgrad"
    stochastic = True
    image_major = True
    absolute = True
    attack_defaults = {"steps": 200, "warm_steps": 30, "optimizer": "adam", "lr": 0.004,
                       "lr_decay": 0.05, "lam": "100", "pred_loss": "cw", "map_loss": "mse",
                       "patience": 0, "step_search": False}

    def __init__(self, model: Classifier, samples: int = 50, sigma: float = 0.15,
                 attack_samples: int = 8, antithetic: bool = True, seed: int = 0,
                 pool: int = 4, internal_batch_size: int | None = 8, beta_start: float = 10.0,
                 beta_end: float = 60.0, verify_every: int = 20, attack_exact: bool = False,
                 estimator: str = "mean") -> None:
        super().__init__(model, pool, internal_batch_size, beta_start, beta_end, verify_every,
                         attack_exact, estimator)
        if samples < 1 or attack_samples < 1:
            raise ValueError(f"samples and attack_samples must be ≥ 1, got {samples}, "
                             f"{attack_samples}")
        if antithetic and attack_samples % 2:
            raise ValueError(f"antithetic draws come in pairs: attack_samples must be even, "
                             f"got {attack_samples}")
        if estimator == "halves" and attack_samples < 2:
            raise ValueError(f"the halves estimator needs two groups of draws: attack_samples "
                             f"must be ≥ 2, got {attack_samples}")
        if estimator == "halves" and antithetic and attack_samples % 4:
            raise ValueError(f"the halves estimator with antithetic pairs needs whole pairs in "
                             f"each half: attack_samples must be a multiple of 4, got "
                             f"{attack_samples}")
        self.samples, self.sigma, self.seed = samples, sigma, seed
        self.attack_samples, self.antithetic = attack_samples, antithetic
        self.n_points = samples
        self._noise: tuple[tuple, torch.Tensor] | None = None
        self.passes_per_step = self.attack_passes(attack_samples)
        self.explain_passes = samples + 1

    def points(self, x: torch.Tensor, seeds: list[int], lo: int, hi: int) -> torch.Tensor:
        key = (tuple(seeds), tuple(x.shape), x.device)
        if self._noise is None or self._noise[0] != key:  # drawn once per explain call
            self._noise = key, torch.stack([gaussian_noise(s, self.samples, x.shape[1:],
                                                           self.sigma) for s in seeds]).to(x)
        return x[:, None] + self._noise[1][:, lo:hi]

    def weights(self, n: int) -> torch.Tensor:
        return torch.full((n,), 1.0 / n, device="cpu")

    def attack_points(self, x: torch.Tensor, seeds: list[int],
                      call: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.attack_samples
        fresh = k // 2 if self.antithetic else k
        noise = torch.stack([gaussian_noise(int(np.random.SeedSequence([s, call]).generate_state(
            1)[0]), fresh, x.shape[1:], self.sigma) for s in seeds], dim=1).to(x)  # fresh×N×…
        if self.antithetic:  # pairs ε, −ε side by side: halves hold whole pairs (k % 4 = 0)
            noise = torch.stack([noise, -noise], dim=1).flatten(0, 1)
        return x[None] + noise, torch.full((k,), 1.0 / k, device=x.device)

    def combine(self, x: torch.Tensor, seeds: list[int],
                averaged: torch.Tensor) -> torch.Tensor:
        return averaged

    def config(self) -> dict:
        return super().config() | {"samples": self.samples, "sigma": self.sigma,
                                   "attack_samples": self.attack_samples,
                                   "antithetic": self.antithetic}
