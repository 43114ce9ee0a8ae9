"""Adaptive ADV² against feature squeezing (the paper's Algorithm 2, and a joint variant).

All variants are the project's :class:`~adv2.attacks.ADV2` with two hooks of the engine:

- a penalty on each guarded squeezer s whose L1 score is above ``margin`` × its threshold:
  ``weight · (score_s(x) − margin · threshold_s) + ce_weight · H(f(x), f(ψ_s(x)))``, the hinge
  plus the paper's cross entropy between the predictions on x (fixed) and on the squeezed x
  (which keeps a gradient where the softmax saturates); rounding is straight-through, the
  median differentiable through the selected element, non-local means has an identity
  backward (BPDA);
- a success criterion (:class:`Undetected`): an iterate counts as successful only if no
  guarded squeezer flags it, so the kept best iterate is undetected as well, and the reported
  success means "target predicted and undetected".

For a single bit-depth squeezer with i bits, :class:`AdaptiveADV2` runs the paper's two stages:
targeted PGD on f(ψ(x)) with step 1/2^i gives x⁺ = ψ(x₁); then ADV² adds
``match_weight · ‖softmax f(x) − softmax f(x⁺)‖₁`` to the penalty above.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, replace
from typing import Sequence

import torch
from torch import nn

from adv2.attacks.adv2 import ADV2
from adv2.attacks.criteria import Composable, TargetPredicted
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, Images, as_batch
from adv2.attacks.schedules import Scaled
from adv2.attacks.settings import ADAPTIVE_DEFAULTS
from adv2.detection.detector import FeatureSqueezingDetector, softmax_l1
from adv2.detection.squeezers import BitDepth, Squeezer
from adv2.models import device_of


class Squeezed(nn.Module):
    """``model(squeezer(x))``: the classifier seen through a squeezer (for PGD in the squeezed
    space; gradients straight through the squeezer)."""

    def __init__(self, model: nn.Module, squeezer: Squeezer) -> None:
        super().__init__()
        self.model, self.squeezer = model, squeezer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.squeezer(x))


class SqueezeGuard:
    """Penalty and acceptance hooks that keep iterates below a fitted detector's thresholds.

    ``columns``: indices of the guarded squeezers in ``detector`` (all by default). The
    penalty (module docstring) acts on scores above ``margin`` × threshold; an iterate is
    accepted when every guarded score is ≤ ``accept_margin`` × threshold (a little headroom
    against batch-size rounding).
    """

    def __init__(self, detector: FeatureSqueezingDetector, columns: Sequence[int] | None = None,
                 margin: float = 0.9, weight: float = 3.0, ce_weight: float = 0.3,
                 accept_margin: float = 0.98) -> None:
        self.detector = detector
        self.columns = list(range(len(detector.squeezers)) if columns is None else columns)
        self.thresholds = detector.check_fitted()[self.columns]
        self.margin, self.weight, self.ce_weight = margin, weight, ce_weight
        self.accept_margin = accept_margin
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def scores(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """n×len(columns) guarded scores of x with logits f(x) (no gradient) for the batch rows
        ``rows`` (n,), cached so that :meth:`accept` after :meth:`penalty` on the same
        iterates, or on some of them, costs nothing."""
        x = x.detach()
        if self._cache is not None:
            cached_rows, cached_x, cached_scores = self._cache
            match = rows[:, None] == cached_rows[None, :]
            if match.any(dim=1).all():
                at = match.int().argmax(dim=1)
                if torch.equal(cached_x[at], x):
                    return cached_scores[at]
        with torch.no_grad():
            scores = self.detector.score_logits(x, logits.detach(), self.columns)
        self._cache = (rows.clone(), x.clone(), scores)
        return scores

    def penalty(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n,) penalty summed over the guarded squeezers above their margin (zero elsewhere);
        differentiable in x and ``logits``."""
        limits = self.margin * self.thresholds
        active = self.scores(x, logits, rows) > limits
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for j, col in enumerate(self.columns):
            idx = torch.nonzero(active[:, j]).flatten()
            if idx.numel() == 0:
                continue
            squeezed = self.detector.model(self.detector.squeezers[col](x[idx]))
            hinge = (softmax_l1(logits[idx], squeezed) - limits[j]).clamp(min=0)
            cross = -(logits[idx].detach().softmax(dim=1) * squeezed.log_softmax(dim=1)).sum(dim=1)
            total = total.index_add(0, idx, self.weight * hinge + self.ce_weight * cross)
        return total

    def accept(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n,) bool: no guarded squeezer flags x."""
        limits = self.accept_margin * self.thresholds
        return (self.scores(x, logits, rows) <= limits).all(dim=1)


@dataclass(frozen=True)
class Undetected(Composable):
    """The success criterion "no guarded squeezer flags x" (:meth:`SqueezeGuard.accept`)."""

    guard: SqueezeGuard

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        return self.guard.accept(x, logits, rows)


@dataclass
class ProbabilityMatch:
    """Penalty ``weight · ‖softmax(logits) − reference[rows]‖₁`` toward fixed per-image
    probability vectors ``reference`` (N×C) — stage 2 of the bit-depth attack."""

    reference: torch.Tensor
    weight: float = 1.0

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.weight * (logits.softmax(dim=1) - self.reference[rows]).abs().sum(dim=1)


@dataclass
class AdaptiveADV2:
    """ADV² (``attack``, e.g. :meth:`ADV2.for_interpreter`) that also evades the fitted
    ``detector``'s squeezers at ``columns`` (all by default).

    Shape:
        the same as :class:`ADV2`'s: ``attack(x, targets, target_maps=None)``.

    Returns:
        :class:`AttackResult`; its success means the target is predicted *and* no guarded
        squeezer flags the image.

    With one bit-depth squeezer
    and ``two_stage`` the paper's bit-depth algorithm runs (module docstring); ``stage1_steps``
    PGD steps stop once p(target) on the squeezed image reaches ``stage1_confidence``.
    ``steps`` (when not None) and ``patience`` replace the base attack's; patience None (the
    default) runs every image for all ``steps``: an image that has not improved its map for a
    while still does once the penalties are met. The base λ schedule is multiplied by
    ``lam_scale`` (None: the interpreter's ``adaptive_lam_scale``): evading the detector
    and matching the map at once needs a longer joint stage, and the map term must keep its
    weight against the penalties. The base attack's per-example step search is dropped.
    """

    attack: ADV2
    detector: FeatureSqueezingDetector
    columns: Sequence[int] | None = None
    _: KW_ONLY
    margin: float = 0.9
    weight: float = 3.0
    ce_weight: float = 0.3
    steps: int | None = ADAPTIVE_DEFAULTS["steps"]
    patience: int | None = None
    lam_scale: float | None = None
    two_stage: bool = True
    match_weight: float = 1.0
    stage1_steps: int = 50
    stage1_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.lam_scale is None:
            self.lam_scale = self.attack.interpreter.adaptive_lam_scale
        self.guard = SqueezeGuard(self.detector, self.columns, self.margin, self.weight,
                                  self.ce_weight)

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        return {"attack": "adaptive-adv2", "base": self.attack.config(),
                "squeezers": [self.detector.names[c] for c in self.guard.columns],
                "margin": self.margin, "weight": self.weight, "ce_weight": self.ce_weight,
                "steps": self.steps, "patience": self.patience, "lam_scale": self.lam_scale,
                "two_stage": self.two_stage and self.bit_depth is not None,
                "match_weight": self.match_weight, "stage1_steps": self.stage1_steps,
                "stage1_confidence": self.stage1_confidence}

    @property
    def bit_depth(self) -> BitDepth | None:
        """The guarded squeezer when it is a single bit-depth reduction, else None."""
        squeezers = [self.detector.squeezers[c] for c in self.guard.columns]
        if len(squeezers) == 1 and isinstance(squeezers[0], BitDepth):
            return squeezers[0]
        return None

    def __call__(self, x: Images, targets: torch.Tensor,
                 target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        penalties: tuple = (*self.attack.penalties, self.guard.penalty)
        squeezer = self.bit_depth
        if self.two_stage and squeezer is not None:
            reference = self.stage_one(x, targets, squeezer, support)
            penalties = (*penalties, ProbabilityMatch(reference, self.match_weight))
        return self.joint(penalties)(x, targets, target_maps, support)

    def joint(self, penalties: tuple) -> ADV2:
        """The base attack with ``penalties``, the guard's acceptance test, λ × ``lam_scale``,
        this attack's steps and patience, and no margin-keeping step search: it undoes the
        steps the penalties need (on MASK, the only interpreter whose ADV² uses it, it kept
        every iterate flagged)."""
        overrides: dict = {"patience": self.patience, "step_search": None}
        if self.steps is not None:
            overrides["steps"] = self.steps
        return replace(self.attack, penalties=penalties,
                       criterion=TargetPredicted() & Undetected(self.guard),
                       lam=Scaled(self.attack.lam, self.lam_scale), **overrides)

    def stage_one(self, x: Images, targets: torch.Tensor, squeezer: BitDepth,
                  support: torch.Tensor | None = None) -> torch.Tensor:
        """softmax f(x⁺) (N×C) for x⁺ = ψ(x₁), x₁ from targeted PGD on f∘ψ in the ε-ball with
        step 1/2^bits."""
        model = self.attack.model
        pgd = PGD(Squeezed(model, squeezer), eps=self.attack.eps,
                  step_size=1 / 2**squeezer.bits, steps=self.stage1_steps,
                  stop_on_success=True, min_confidence=self.stage1_confidence,
                  loss=self.attack.pred_loss)
        x0 = as_batch(x, device_of(model))
        x1 = pgd.run(x0, targets.to(x0.device),
                     None if support is None else support.to(x0.device)).x
        with torch.no_grad():
            return model(squeezer(x1)).softmax(dim=1)
