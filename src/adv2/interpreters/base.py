"""The interpreter interface shared by GRAD, CAM, MASK, RTS and the ones that plug in later."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from adv2.models import Classifier


def minmax(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample min-max normalisation of N×1×h×w maps to [0,1]; a constant map gives zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


@dataclass(frozen=True)
class Verification:
    """How the attack engine judges the iterates of an interpreter whose attack values are not
    its true maps: with :meth:`Interpreter.explain` every ``every`` steps and, with
    ``on_success``, as soon as an image whose last judged iterate failed succeeds again;
    ``after(rows, maps)`` is told each verified map (e.g. to restart a tracked inner state)."""

    every: int
    on_success: bool = True
    after: Callable[[torch.Tensor, torch.Tensor], None] | None = None


class Interpreter(ABC):
    """Maps images and classes to attribution maps.

    ``interpreter(x, classes)``: x is float N×3×H×W in [0,1], classes a long tensor (N,);
    the result is N×1×h×w in [0,1] at the interpreter's native resolution (:meth:`resolution`),
    high values meaning "important", differentiable with respect to x.
    """

    name: str = "interpreter"
    #: ADV²'s settings for this interpreter (:class:`~adv2.attacks.settings.AttackSettings`
    #: keys), measured in the benchmarks (these: on CAM, docs/benchmarks/cam.md);
    #: ``ADV2.for_interpreter`` and the CLI both use them
    attack_defaults: ClassVar[dict[str, Any]] = {
        "steps": 110, "warm_steps": 50, "optimizer": "adam", "lr": 2 / 255, "lr_decay": 1.0,
        "lam": "5:10", "pred_loss": "ce", "map_loss": "mse", "patience": 20,
        "step_search": False}
    #: ADV²'s settings over :attr:`attack_defaults` when the perturbation is confined to a
    #: support (any ``support`` but ``full``, :mod:`adv2.attacks.support`), measured with
    #: AdvEdge's edge support in the benchmarks; none: the full-support defaults apply
    support_attack_defaults: ClassVar[dict[str, Any]] = {}
    #: black-box ADV²'s settings (``threat="black-box"``, :mod:`adv2.blackbox`): the weight λ
    #: of the map term against the log-probability margin, and the IoU of the oracle's map to
    #: the target map at which an image stops, and the fraction of the image the first square
    #: covers (Square Attack's 0.05) (docs/benchmarks/blackbox.md)
    blackbox_attack_defaults: ClassVar[dict[str, Any]] = {"lam": "50", "stop_iou": 0.9,
                                                          "p_init": 0.05}
    #: λ multiplier of adaptive ADV² against all squeezers (docs/detection*.md)
    adaptive_lam_scale: ClassVar[float] = 4.0
    #: ways ADV² can differentiate this interpreter (its ``strategy`` setting), if several
    attack_strategies: ClassVar[tuple[str, ...]] = ()
    #: whether the maps are differentiable in x; ADV² refuses an interpreter that is not
    differentiable: ClassVar[bool] = True
    #: forward+backward passes one :meth:`attack_forward` step costs (for cost reports)
    passes_per_step: int = 1
    #: sample keys (:attr:`adv2.data.Sample.key`) of the images a trained interpreter was
    #: fitted on, which benchmarks do not attack (RTS: its training images)
    fitted_on: frozenset[str] = frozenset()
    #: passes one :meth:`explain` call costs
    explain_passes: int = 1
    #: whether the maps depend on random draws (SmoothGrad's noise, MASK's jitter): such an
    #: interpreter draws them from one seed per image (:meth:`use_seeds`), so that a map is a
    #: function of the image, the class and that seed, identical on every rerun and resume
    stochastic: ClassVar[bool] = False

    def __init__(self, model: Classifier) -> None:
        self.model = model
        #: the per-image seeds of the batch being explained (:meth:`use_seeds`)
        self.seeds: torch.Tensor | None = None

    def use_seeds(self, seeds: Sequence[int] | None) -> None:
        """Seed the random draws of the next calls: one seed per image of the batch they
        explain or attack, in its row order (None: the interpreter's own ``seed`` for every
        image). Deterministic interpreters keep them unused.

        Examples:
            >>> smoothgrad.use_seeds([11, 12])   # doctest: +SKIP
            >>> maps = smoothgrad(x[:2], classes[:2])
        """
        # read on the host
        self.seeds = None if seeds is None else torch.tensor(list(seeds), device="cpu")

    def image_seeds(self, n: int, rows: torch.Tensor | None = None) -> list[int]:
        """The seeds of ``n`` images: the seeded batch's (its ``rows`` when given), else the
        interpreter's ``seed`` setting (0 without one) for each."""
        if self.seeds is None:
            return [int(getattr(self, "seed", 0))] * n
        chosen = self.seeds if rows is None else self.seeds[rows.cpu()]
        if len(chosen) != n:
            raise ValueError(f"{self.name}: {len(chosen)} seeds set for {n} images; call "
                             "use_seeds with one seed per image of the batch")
        return chosen.tolist()

    @abstractmethod
    def resolution(self, height: int, width: int) -> tuple[int, int]:
        """Native map size (h, w) for an input of size (height, width)."""

    @abstractmethod
    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the true model's logits (N×C) and the true maps (N×1×h×w) of x."""

    def __call__(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.explain(x, classes)[1]

    def explain_predicted(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits (N×C) of x and the maps of each image's predicted class, as a deployed
        system explains its answer (:class:`adv2.blackbox.Oracle`); the default predicts, then
        calls :meth:`explain`."""
        with torch.no_grad():
            classes = self.model(x).argmax(dim=1)
        return self.explain(x, classes)

    def explain_rows(self, x: torch.Tensor, classes: torch.Tensor,
                     rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`explain` of the images ``rows`` (indices) of the seeded batch: what the
        attack engine calls to judge a subset of its batch. Stochastic interpreters draw with
        those images' seeds; the default is :meth:`explain`."""
        return self.explain(x, classes)

    def attack_forward(
        self, x: torch.Tensor, classes: torch.Tensor, progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and maps for computing attack gradients.

        Unless :meth:`verification` says otherwise, the *values* are those of the true model
        and the true interpreter, so the attack engine can do its bookkeeping from this one
        call; the *gradients* may come from a smooth surrogate (GRAD). ``progress`` in [0,1] is the
        fraction of the attack done, for surrogate schedules; ``rows`` are the indices of x's
        images in the attacked batch, for interpreters that keep per-image state (MASK). The
        default is :meth:`explain` itself.
        """
        return self.explain(x, classes)

    def attack_loss(
        self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
        map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N×C) and the interpretation loss (N,) the attack minimises for x.

        By default ``map_loss`` between the maps of :meth:`attack_forward` and ``target_maps``;
        interpreters with several attack strategies (MASK) override it.
        """
        logits, maps = self.attack_forward(x, classes, progress, rows)
        return logits, map_loss(maps, target_maps)

    def explain_loss(
        self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
        map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (N×C), true maps (:meth:`explain_rows`) and their interpretation distance
        (N,) to ``target_maps``: how the attack engine judges an iterate. The default is
        ``map_loss`` of the maps; a joint interpreter combines its members'
        (:mod:`adv2.interpreters.joint`)."""
        logits, maps = self.explain_rows(x, classes, rows)
        return logits, maps, map_loss(maps, target_maps)

    def parts(self, maps: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The maps of each interpreter that ``maps`` (of inputs of ``size``, (H, W)) hold,
        by name, each N×1×h×w: ``{name: maps}`` for one interpreter, every member's for a
        joint one; reports measure each part on its own (:func:`~adv2.attacks.result.
        distances`)."""
        return {self.name: maps}

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The maps that hold ``parts`` (the inverse of :meth:`parts`)."""
        return parts[self.name]

    def start_attack(self, x: torch.Tensor, classes: torch.Tensor,
                     clean: torch.Tensor | None = None) -> int:
        """Called by the attack engine before its first step on a batch: ``x`` the first
        iterates, ``classes`` the target classes, ``clean`` the images the ε-ball is centred
        on (None when the caller has none); returns the passes per image it spent (stateless
        by default: 0)."""
        return 0

    def verification(self) -> Verification | None:
        """How the engine must judge attack iterates: None (the default) when
        :meth:`attack_forward`'s values are the true maps, so every step is judged for free;
        else a :class:`Verification` schedule of :meth:`explain` calls."""
        return None

    def config(self) -> dict:
        """Settings that define the maps, for reports."""
        return {"name": self.name}
