"""The ensemble-interpretation detector (the ADV² paper's countermeasure), registered as
``ensemble``.

An interpretable system explains its answer with several interpreters; ADV² against one of
them transfers poorly to the others, so their maps of the predicted class disagree. The score
is that disagreement, :func:`~adv2.detection.consistency.inconsistency`: 1 − the top-k% IoU
(k = 10 … 50%, the reports' IoU) of the maps pooled to the coarsest one's resolution, averaged
over pairs of interpreters.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from adv2 import metrics
from adv2.detection.consistency import inconsistency, soft_inconsistency
from adv2.detection.detector import Detector
from adv2.detection.guard import Guard
from adv2.errors import SettingError, check_each
from adv2.interpreters import Interpreter, build_interpreter
from adv2.interpreters.plugins import resolve


class EnsembleDetector(Detector):
    """Flags inputs whose interpreters disagree about the predicted class.

    Arguments:
        model: the classifier. interpreters: two or more interpreters or their names (any
        registered interpreter, ``package.module:Class`` or ``captum:<Name>``; default CAM and
        GRAD). ks: the top-k fractions of the IoU. batch_size: images scored at once.

    Shape:
        images: uint8 n×H×W×3 arrays or float n×3×H×W tensors in [0,1]; scores n×1 in [0, 1]
        (the column ``inconsistency``).

    Examples:
        >>> EnsembleDetector(model, ["cam", "grad"]).fit(benign, fpr=0.05)  # doctest: +SKIP
    """

    name = "ensemble"

    def __init__(self, model: torch.nn.Module | None,
                 interpreters: Sequence[Interpreter | str] = ("cam", "grad"),
                 ks: Sequence[float] = metrics.DEFAULT_KS, batch_size: int = 32) -> None:
        super().__init__(model, batch_size)
        if len(interpreters) < 2:
            raise SettingError("interpreters", f"give two or more interpreters, got "
                                               f"{len(interpreters)}")
        self.check_settings({"ks": ks})
        self.interpreters = [build_interpreter(i, model) if isinstance(i, str) else i
                             for i in interpreters]
        self.ks = tuple(float(k) for k in ks)
        self.names = ["inconsistency"]

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        super().check_settings(settings)
        names = settings.get("interpreters", ("cam", "grad"))
        if isinstance(names, str) or len(names) < 2:
            raise SettingError("interpreters", f"give two or more interpreters, got {names!r}")
        check_each("interpreters", names, resolve)
        ks = settings.get("ks", metrics.DEFAULT_KS)
        if isinstance(ks, str) or not ks or not all(0 < float(k) <= 1 for k in ks):
            raise SettingError("ks", f"give top-k fractions in (0, 1], got {ks!r}")

    def settings(self) -> dict[str, Any]:
        return {"interpreters": [i.name for i in self.interpreters], "ks": list(self.ks)}

    def score_classes(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """n×1 inconsistency of the interpreters' true maps of ``classes`` (n,) for x."""
        maps = [interpreter.explain(x, classes)[1].detach() for interpreter in self.interpreters]
        return inconsistency(maps, self.ks)[:, None]

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_classes(x, self.model(x).argmax(dim=1))

    def guard(self, columns: Sequence[int] | None = None, margin: float = 0.9,
              weight: float = 3.0) -> EnsembleGuard:
        return EnsembleGuard(self, columns, margin, weight)


class EnsembleGuard(Guard):
    """The adaptive attack's hooks against a fitted :class:`EnsembleDetector`.

    On an input whose inconsistency is above ``margin`` × the threshold, the penalty is
    ``weight`` × :func:`~adv2.detection.consistency.soft_inconsistency` of the interpreters'
    maps of the predicted class, differentiated through each interpreter's
    :meth:`~adv2.interpreters.Interpreter.attack_forward` (GRAD's second derivatives through
    its surrogate; IG's and SmoothGrad's sampled estimates) at ``progress`` of its attack
    schedule. An interpreter that is not differentiable, or whose attack tracks an inner state
    the engine restarts (its :meth:`~adv2.interpreters.Interpreter.verification` has an
    ``after`` hook: MASK), cannot be guarded (ValueError).

    Arguments:
        detector: the fitted detector; columns, margin, weight, accept_margin: as
        :class:`Guard`'s; progress: in [0, 1], where in their attack schedules the
        interpreters are differentiated (1: the surrogate closest to the true maps).
    """

    detector: EnsembleDetector

    def __init__(self, detector: EnsembleDetector, columns: Sequence[int] | None = None,
                 margin: float = 0.9, weight: float = 3.0, accept_margin: float = 0.98,
                 progress: float = 1.0) -> None:
        super().__init__(detector, columns, margin, weight, accept_margin)
        for interpreter in detector.interpreters:
            policy = interpreter.verification()
            if not interpreter.differentiable or (policy is not None and policy.after is not None):
                raise ValueError(f"the ensemble guard cannot differentiate {interpreter.name}: "
                                 "its maps are not differentiable, or its attack tracks a state "
                                 "that only the attack engine restarts")
        self.progress = progress

    def score(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.detector.score_classes(x, logits.argmax(dim=1))[:, self.columns]

    def penalty(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        idx = torch.nonzero(self.active(x, logits, rows).any(dim=1)).flatten()
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if idx.numel() == 0:
            return total
        classes = logits[idx].detach().argmax(dim=1)
        maps = [interpreter.attack_forward(x[idx], classes, self.progress, rows[idx])[1]
                for interpreter in self.detector.interpreters]
        return total.index_add(0, idx, self.weight * soft_inconsistency(maps))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "interpreters": self.detector.settings()["interpreters"],
                "progress": self.progress}
