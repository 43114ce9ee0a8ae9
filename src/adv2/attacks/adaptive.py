"""Adaptive ADV²: ADV² that also evades one or several fitted detectors (the paper's
Algorithm 2 against feature squeezing, and a joint variant against any detector).

All variants are the project's :class:`~adv2.attacks.ADV2` with two hooks of the engine per
detector, its :class:`~adv2.detection.Guard` (``detector.guard(...)``):

- the guard's differentiable penalty on inputs whose score is above ``margin`` × its
  threshold (feature squeezing: :class:`~adv2.detection.SqueezeGuard`; the ensemble of
  interpreters: :class:`~adv2.detection.EnsembleGuard`);
- a success criterion (:class:`Undetected`): an iterate counts as successful only if no
  guarded detector flags it, so the kept best iterate is undetected as well, and the reported
  success means "target predicted and undetected by every detector".

For a single bit-depth squeezer with i bits, :class:`AdaptiveADV2` runs the paper's two stages:
targeted PGD on f(ψ(x)) with step 1/2^i gives x⁺ = ψ(x₁); then ADV² adds
``match_weight · ‖softmax f(x) − softmax f(x⁺)‖₁`` to the penalty above.

Adaptive ADV² is ADV²'s adaptive form in :data:`~adv2.attacks.ATTACKS` (its ``adaptive``
entry): settings with ``adaptive`` (detector files) build it from the ADV² they describe
(:meth:`AdaptiveADV2.from_settings`).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from adv2.attacks.adv2 import ADV2
from adv2.attacks.criteria import Composable, TargetPredicted
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, Images, as_batch
from adv2.attacks.schedules import Scaled
from adv2.attacks.settings import NOT_RECORDED, AttackSettings, recorded
from adv2.detection import BitDepth, Detector, Guard, SqueezeGuard, Squeezer, load_detector
from adv2.interpreters import Interpreter
from adv2.models import device_of

#: the joint stage of adaptive ADV²: longer, no early stop, and no λ search unless asked for
#: (:meth:`AdaptiveADV2.settings_defaults`; the dataclass's own default ``steps`` is this one)
ADAPTIVE_DEFAULTS: dict[str, Any] = {"steps": 200, "patience": 0, "lam_search": None}


class Squeezed(nn.Module):
    """``model(squeezer(x))``: the classifier seen through a squeezer (for PGD in the squeezed
    space; gradients straight through the squeezer)."""

    def __init__(self, model: nn.Module, squeezer: Squeezer) -> None:
        super().__init__()
        self.model, self.squeezer = model, squeezer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.squeezer(x))


@dataclass(frozen=True)
class Undetected(Composable):
    """The success criterion "the guarded detector does not flag x" (:meth:`Guard.accept`)."""

    guard: Guard

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
    ``detector`` (or every one of a sequence of detectors), guarding its score ``columns``
    (all by default; one detector only).

    Arguments:
        attack: the ADV² to extend. detector: a fitted :class:`~adv2.detection.Detector`, or
        several. columns: the guarded score columns of a single detector. margin, weight: its
        guard's (:meth:`Detector.guard`). steps, patience, lam_scale: the joint stage (below).
        two_stage, match_weight, stage1_steps, stage1_confidence: the bit-depth algorithm.

    Shape:
        the same as :class:`ADV2`'s: ``attack(x, targets, target_maps=None)``.

    Returns:
        :class:`AttackResult`; its success means the target is predicted *and* no guarded
        score column is above its threshold: with every column guarded (the default), no
        detector flags the image (a detector's joint threshold is at least each column's);
        with ``columns``, a subset, only those columns are evaded.

    Against one feature-squeezing detector guarding one bit-depth squeezer, with
    ``two_stage``, the paper's bit-depth algorithm runs (module docstring); ``stage1_steps``
    PGD steps stop once p(target) on the squeezed image reaches ``stage1_confidence``.
    ``steps`` (when not None) and ``patience`` replace the base attack's; patience None (the
    default) runs every image for all ``steps``: an image that has not improved its map for a
    while still does once the penalties are met. The base λ schedule is multiplied by
    ``lam_scale`` (None: the interpreter's ``adaptive_lam_scale``): evading the detector
    and matching the map at once needs a longer joint stage, and the map term must keep its
    weight against the penalties. The base attack's per-example step search is dropped.

    Examples:
        >>> AdaptiveADV2(ADV2.for_interpreter(model, cam), [squeeze, ensemble])  # doctest: +SKIP
    """

    attack: ADV2 = field(metadata=NOT_RECORDED)  # recorded as the base, the detectors' guards
    detector: Detector | Sequence[Detector] = field(metadata=NOT_RECORDED)
    columns: Sequence[int] | None = field(default=None, metadata=NOT_RECORDED)
    _: KW_ONLY
    margin: float = 0.9
    weight: float = 3.0
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
        detectors = [self.detector] if isinstance(self.detector, Detector) else [*self.detector]
        if not detectors:
            raise ValueError("adaptive ADV² needs at least one detector")
        if self.columns is not None and len(detectors) > 1:
            raise ValueError("columns selects the scores of a single detector")
        self.guards: list[Guard] = [d.guard(self.columns, self.margin, self.weight)
                                    for d in detectors]

    @staticmethod
    def settings_defaults(interpreter: type[Interpreter] | Interpreter,
                          support: str) -> dict[str, Any]:
        """Adaptive ADV²'s unset settings against ``interpreter``: ADV²'s
        (:meth:`ADV2.settings_defaults`) with :data:`ADAPTIVE_DEFAULTS` over them."""
        return {**ADV2.settings_defaults(interpreter, support), **ADAPTIVE_DEFAULTS}

    @classmethod
    def from_settings(cls, settings: AttackSettings, model: nn.Module | None,
                      interpreter: Interpreter | None) -> AdaptiveADV2:
        """The ADV² that resolved ``settings`` describe (:meth:`ADV2.from_settings`) wrapped to
        evade the detectors fitted in the files of ``settings.adaptive`` (a ValueError names
        an unreadable one); the settings' ``steps`` and ``patience`` (0: none) are the joint
        stage's."""
        files = (settings.adaptive,) if isinstance(settings.adaptive, str) else settings.adaptive
        attack = ADV2.from_settings(settings, model, interpreter)
        return cls(attack, [load_detector(model, path) for path in files], steps=settings.steps,
                   patience=settings.patience or None)

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        # two_stage, in its place among the fields: whether the bit-depth algorithm runs
        return {"attack": "adaptive-adv2", "base": self.attack.config(),
                "guards": [guard.config() for guard in self.guards], **recorded(self),
                "two_stage": self.two_stage and self.bit_depth is not None}

    @property
    def bit_depth(self) -> BitDepth | None:
        """The guarded squeezer when the only guard is feature squeezing's and guards a single
        bit-depth reduction, else None."""
        if len(self.guards) == 1 and isinstance(self.guards[0], SqueezeGuard):
            squeezers = self.guards[0].squeezers
            if len(squeezers) == 1 and isinstance(squeezers[0], BitDepth):
                return squeezers[0]
        return None

    def __call__(self, x: Images, targets: torch.Tensor,
                 target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        penalties: tuple = (*self.attack.penalties, *(guard.penalty for guard in self.guards))
        squeezer = self.bit_depth
        if self.two_stage and squeezer is not None:
            reference = self.stage_one(x, targets, squeezer, support)
            penalties = (*penalties, ProbabilityMatch(reference, self.match_weight))
        return self.joint(penalties)(x, targets, target_maps, support)

    def joint(self, penalties: tuple) -> ADV2:
        """The base attack with ``penalties``, every guard's acceptance test, λ × ``lam_scale``,
        this attack's steps and patience, and no margin-keeping step search: it undoes the
        steps the penalties need (on MASK, the only interpreter whose ADV² uses it, it kept
        every iterate flagged)."""
        overrides: dict = {"patience": self.patience, "step_search": None}
        if self.steps is not None:
            overrides["steps"] = self.steps
        criterion: Composable = TargetPredicted()
        for guard in self.guards:
            criterion = criterion & Undetected(guard)
        return replace(self.attack, penalties=penalties, criterion=criterion,
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
