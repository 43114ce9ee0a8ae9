"""Interpreters that average the class logit's input gradient over sampled points of the image
(Integrated Gradients' path, SmoothGrad's noise): the exact average for their maps and the
fast surrogate's differentiable one for ADV².

Maps are post-processed as GRAD's (:func:`~adv2.interpreters.grad.gradient_map`): |a|, max
over channels, ``pool``×``pool`` average pooling, per-image min–max.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch


from adv2.interpreters.base import Interpreter, Verification
from adv2.interpreters.grad import gradient_map
from adv2.interpreters.grad_surrogate import (FastSurrogate, beta_at, logit_sum,
                                              unsupported_layers)
from adv2.models import Classifier


#: the attack's map-loss estimators (:meth:`SampledGradients.attack_loss`)
ESTIMATORS = ("mean", "halves", "control")


def logit_gradients(model: torch.nn.Module, points: torch.Tensor, classes: torch.Tensor,
                    create_graph: bool) -> torch.Tensor:
    """∇ f(z)[c] for every row z of ``points`` (R×3×H×W) and its class (R,), in one pass."""
    with torch.enable_grad():
        z = points if points.requires_grad else points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(logit_sum(model(z), classes), z, create_graph=create_graph)
    return grad


class SampledGradients(Interpreter):
    """The shared machinery of IG and SmoothGrad (see the module docstring).

    Subclasses say which points an image's gradients are taken at and how they combine:
    :meth:`points` (exact, for :meth:`explain`), :meth:`attack_points` (few, for ADV²) and
    :meth:`combine`.

    Arguments:
        model: the classifier. pool: the map's pooling (4: 56×56 for 224²).
        internal_batch_size: rows (images × points) per forward pass of :meth:`explain`, as
            Captum's option of that name; None: all at once.
        beta_start, beta_end: the ReLU surrogate's β over the attack (geometric).
        verify_every: the attack judges its iterate with the true map every so many steps.
        attack_exact: the attack's map values from the exact gradients at its points (one
            more backward pass per step) rather than the surrogate's.
        estimator: the attack's map loss: ``mean`` (``map_loss`` of the estimate from all
            its points), ``halves`` (an estimate of the MSE, :meth:`attack_loss`) or
            ``control`` (``map_loss`` of the estimate with the clean image as control
            variate, :meth:`start_attack`).
    """

    passes_per_step: int = 1

    def __init__(self, model: Classifier, pool: int = 4, internal_batch_size: int | None = 8,
                 beta_start: float = 10.0, beta_end: float = 60.0,
                 verify_every: int = 20, attack_exact: bool = True,
                 estimator: str = "mean") -> None:
        super().__init__(model)
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be ≥ 1 or None, got "
                             f"{internal_batch_size}")
        if verify_every < 1:
            raise ValueError(f"verify_every must be ≥ 1, got {verify_every}")
        self.pool = pool
        self.internal_batch_size = internal_batch_size
        self.beta_start, self.beta_end = beta_start, beta_end
        self.verify_every = verify_every
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.attack_exact, self.estimator = attack_exact, estimator
        self.fast = FastSurrogate(model) if not unsupported_layers(model) else None
        self._calls = 0  # attack_forward calls since start_attack: fresh points each step
        self._control: _Control | None = None  # the clean batch (estimator "control")

    # ------------------------------------------------------------------ what subclasses say
    @abstractmethod
    def points(self, x: torch.Tensor, seeds: list[int], lo: int, hi: int) -> torch.Tensor:
        """Points ``lo:hi`` of the exact average for each image of x (N×3×H×W): a tensor
        (hi−lo)×N×3×H×W (point-major) or N×(hi−lo)×3×H×W (image-major, :attr:`image_major`)."""

    @abstractmethod
    def weights(self, n: int) -> torch.Tensor:
        """The weight of each of the ``n`` points of the average (n,)."""

    @abstractmethod
    def attack_points(self, x: torch.Tensor, seeds: list[int],
                      call: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The few points (k×N×3×H×W, differentiable in x) and weights (k,) of the attack's
        estimate at its ``call``-th step."""

    @abstractmethod
    def combine(self, x: torch.Tensor, seeds: list[int],
                averaged: torch.Tensor) -> torch.Tensor:
        """The attribution (N×3×H×W) from the weighted average of the point gradients."""

    #: the layout of :meth:`points` (Captum's: IG point-major, NoiseTunnel image-major)
    image_major: bool = False
    #: the number of points of the exact average
    n_points: int = 1
    #: whether the gradient's magnitude is averaged (SmoothGrad's |∇|) rather than the gradient
    absolute: bool = False

    # ------------------------------------------------------------------ the interface
    def resolution(self, height: int, width: int) -> tuple[int, int]:
        return height // self.pool, width // self.pool

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.explain_rows(x, classes, None)

    def explain_rows(self, x: torch.Tensor, classes: torch.Tensor,
                     rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = self.image_seeds(len(x), rows)
        total = self.averaged(x, classes, seeds)
        with torch.set_grad_enabled(x.requires_grad):
            logits = self.model(x)
        return logits, gradient_map(self.combine(x, seeds, total), self.pool)

    def averaged(self, x: torch.Tensor, classes: torch.Tensor,
                 seeds: list[int]) -> torch.Tensor:
        """The weighted average (N×3×H×W) of the gradients (their magnitudes with
        :attr:`absolute`) at all the :meth:`points` of each image; differentiable when x
        requires grad."""
        n, m = len(x), self.n_points
        per_chunk = m if self.internal_batch_size is None \
            else max(1, self.internal_batch_size // n)
        create = x.requires_grad
        total = torch.zeros_like(x)
        weights = self.weights(m).to(x)
        for lo in range(0, m, per_chunk):
            hi = min(m, lo + per_chunk)
            pts = self.points(x, seeds, lo, hi)
            k = hi - lo
            cls = classes.repeat_interleave(k) if self.image_major else classes.repeat(k)
            grads = logit_gradients(self.model, pts.flatten(0, 1), cls, create)
            grads = grads.view(n, k, *x.shape[1:]).transpose(0, 1) if self.image_major \
                else grads.view(k, n, *x.shape[1:])
            if self.absolute:
                grads = grads.abs()
            total = total + (grads * weights[lo:hi].view(k, 1, 1, 1, 1)).sum(0)
        return total

    def attack_passes(self, points: int) -> int:
        """Forward+backward passes of one attack step from ``points`` points: each point's
        surrogate (and exact, with ``attack_exact``) gradient, the control's at the same
        points (estimator ``control``), the logits."""
        per_point = (2 if self.attack_exact else 1) * (2 if self.estimator == "control" else 1)
        return per_point * points + 1

    def start_attack(self, x: torch.Tensor, classes: torch.Tensor,
                     clean: torch.Tensor | None = None) -> int:
        """Restart the sequence of attack points. With estimator ``control``, also take the
        clean images (``clean``, N×3×H×W) as control variate: their exact average
        :meth:`averaged` for the attack's ``classes`` (an :meth:`explain`'s passes per image).
        Each step's estimate is then that average plus the mean difference between the
        attacked and the clean images' gradients of the same class at the same points:
        unbiased for the attacked map's average (up to the clean average's own draw), with
        the draws' noise cancelled in so far as the two gradients move together, as they do
        for a perturbation small beside the draws' spread."""
        self._calls = 0
        self._control = None
        if self.estimator != "control":
            return 0
        if clean is None:
            raise ValueError(f"{self.name}: the control estimator needs the clean images "
                             "(start_attack's clean)")
        clean = clean.detach()
        seeds = self.image_seeds(len(clean))
        self._control = _Control(clean, classes, self.averaged(clean, classes, seeds))
        return self.explain_passes

    def attack_forward(self, x: torch.Tensor, classes: torch.Tensor, progress: float,
                       rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of x and the estimate of its map from :meth:`attack_points`: the exact
        gradients' values (the surrogate's with ``attack_exact`` off) and the surrogate's
        Jacobian; judged with the true map every :attr:`verify_every` steps."""
        logits, groups = self.attack_maps(x, classes, progress, rows, 1)
        return logits, groups[0]

    def attack_loss(self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
                    map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    progress: float, rows: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``estimator="halves"``, in place of ``map_loss``, the mean of (A − m)(B − m)
        over the map cells, A and B the maps of two independent halves of the points: an
        estimate of the squared distance (MSE) of the *expected* map to m without the
        estimate's own variance; otherwise ``map_loss`` of :meth:`attack_forward`'s map."""
        if self.estimator != "halves":
            return super().attack_loss(x, classes, target_maps, map_loss, progress, rows)
        logits, (a, b) = self.attack_maps(x, classes, progress, rows, 2)
        return logits, ((a - target_maps) * (b - target_maps)).flatten(1).mean(1)

    def attack_maps(self, x: torch.Tensor, classes: torch.Tensor, progress: float,
                    rows: torch.Tensor | None, groups: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of x and the attack's map estimate from each of ``groups`` equal, consecutive
        groups of this step's :meth:`attack_points`."""
        if self.fast is None:
            raise ValueError(f"{self.name}: ADV² needs the fast ReLU surrogate, which does not "
                             f"support this model's layers: "
                             f"{', '.join(unsupported_layers(self.model)[:5])}")
        n = len(x)
        seeds = self.image_seeds(n, rows)
        pts, weights = self.attack_points(x, seeds, self._calls)
        beta = beta_at(progress, self.beta_start, self.beta_end)
        true, smooth = [], []
        for point in pts:  # one batch of N rows per point: on CPUs much faster than k·N rows
            _, t, g = self.fast(point, classes, beta, score=logit_sum, exact=self.attack_exact)
            true.append(t.abs() if self.absolute and t is not None else t)
            smooth.append(g.abs() if self.absolute else g)
        if self._control is not None:
            true, smooth = self._controlled(true, smooth, seeds, rows, beta)
        self._calls += 1
        maps = []
        for part in torch.arange(len(weights), device=x.device).chunk(groups):
            w = weights.to(x)[part]
            w = (w / w.sum()).tolist()

            def attribution(grads: list[torch.Tensor]) -> torch.Tensor:
                return self.combine(x, seeds, sum(wi * grads[j] for wi, j in
                                                  zip(w, part.tolist())))

            sur = gradient_map(attribution(smooth), self.pool)
            value = sur if not self.attack_exact else gradient_map(attribution(true), self.pool)
            maps.append(value.detach() + (sur - sur.detach()))
        return self.model(x), maps

    def _controlled(self, true: list[torch.Tensor | None], smooth: list[torch.Tensor],
                    seeds: list[int], rows: torch.Tensor | None,
                    beta: float) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """The point gradients shifted by the control variate: each minus the clean image's
        at the same point (the same function: exact or surrogate), plus the clean image's
        exact average, so that any weighted average of them is the controlled estimate."""
        control = self._control.rows(rows)
        points, _ = self.attack_points(control.clean, seeds, self._calls)
        shifted_true, shifted_smooth = [], []
        for point, t, g in zip(points, true, smooth):
            ref_true, ref_smooth = self.fast.values(point, control.classes, beta, logit_sum,
                                                    self.attack_exact)
            if self.absolute:
                ref_true = None if ref_true is None else ref_true.abs()
                ref_smooth = ref_smooth.abs()
            shifted_smooth.append(g - ref_smooth + control.average)
            shifted_true.append(None if t is None else t - ref_true + control.average)
        return shifted_true, shifted_smooth

    def verification(self) -> Verification:
        return Verification(self.verify_every)

    def config(self) -> dict:
        return {"name": self.name, "pool": self.pool, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "attack_exact": self.attack_exact,
                "estimator": self.estimator, "verify_every": self.verify_every}


@dataclass
class _Control:
    """The clean batch of estimator ``control``: images (N×3×H×W), the attack's classes (N,)
    and their exact averaged gradients (N×3×H×W)."""

    clean: torch.Tensor
    classes: torch.Tensor
    average: torch.Tensor

    def rows(self, rows: torch.Tensor | None) -> "_Control":
        """The control of the batch's images ``rows`` (all with None)."""
        if rows is None:
            return self
        return _Control(self.clean[rows], self.classes[rows], self.average[rows])
