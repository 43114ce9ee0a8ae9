"""Feature-squeezing detection (Xu et al., NDSS 2018), registered as ``squeeze``.

The score of an image for a squeezer ψ is ‖softmax(f(x)) − softmax(f(ψ(x)))‖₁ ∈ [0, 2]; the
joint score is the maximum over the squeezers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from adv2.detection.detector import Detector
from adv2.detection.guard import Guard
from adv2.detection.squeezers import SQUEEZER_NAMES, Squeezer, build_squeezer
from adv2.errors import SettingError, check_each


def softmax_l1(logits: torch.Tensor, squeezed_logits: torch.Tensor) -> torch.Tensor:
    """(n,) L1 distances between the softmax vectors of two n×C logit batches."""
    return (logits.softmax(dim=1) - squeezed_logits.softmax(dim=1)).abs().sum(dim=1)


class FeatureSqueezingDetector(Detector):
    """Flags inputs whose prediction moves under squeezing.

    Arguments:
        model: the classifier. squeezers: :class:`Squeezer` modules or their names
        (``bit-3``, ``median-2x2``, ``nlm-11-3-4``, ...; default: every one of
        :data:`SQUEEZER_NAMES`). batch_size: images scored at once.

    Shape:
        images: uint8 n×H×W×3 arrays or float n×3×H×W tensors in [0,1]; scores n×S, one column
        per squeezer, in [0, 2].

    Examples:
        >>> FeatureSqueezingDetector(model, ["bit-2"]).fit(benign, fpr=0.05)  # doctest: +SKIP
    """

    name = "squeeze"

    def __init__(self, model: torch.nn.Module | None,
                 squeezers: Sequence[Squeezer | str] = SQUEEZER_NAMES,
                 batch_size: int = 32) -> None:
        super().__init__(model, batch_size)
        if not squeezers:
            raise ValueError("a feature-squeezing detector needs at least one squeezer")
        self.squeezers = [build_squeezer(s) if isinstance(s, str) else s for s in squeezers]
        self.names = [s.name for s in self.squeezers]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate squeezers in {self.names}")

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        super().check_settings(settings)
        names = settings.get("squeezers", SQUEEZER_NAMES)
        if isinstance(names, str) or not names:
            raise SettingError("squeezers", f"give a list of one or more squeezers, got {names!r}")
        check_each("squeezers", names, build_squeezer)

    def settings(self) -> dict[str, Any]:
        return {"squeezers": self.names}

    def score_logits(self, x: torch.Tensor, logits: torch.Tensor | None = None,
                     columns: Sequence[int] | None = None) -> torch.Tensor:
        """n×len(columns) scores of float images x (n×3×H×W on the uint8 lattice), for the
        squeezers at ``columns`` (all by default); differentiable when x requires grad (rounding
        straight-through, NLM identity backward). ``logits``: f(x) if already computed."""
        logits = self.model(x) if logits is None else logits
        cols = range(len(self.squeezers)) if columns is None else columns
        return torch.stack([softmax_l1(logits, self.model(self.squeezers[c](x))) for c in cols],
                           dim=1)

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_logits(x)

    def guard(self, columns: Sequence[int] | None = None, margin: float = 0.9,
              weight: float = 3.0) -> SqueezeGuard:
        return SqueezeGuard(self, columns, margin, weight)


class SqueezeGuard(Guard):
    """The adaptive attack's hooks against a fitted :class:`FeatureSqueezingDetector`.

    On each guarded squeezer s whose score is above ``margin`` × its threshold, the penalty is
    ``weight · (score_s(x) − margin · threshold_s) + ce_weight · H(f(x), f(ψ_s(x)))``: the
    hinge plus the paper's cross entropy between the predictions on x (fixed) and on the
    squeezed x, which keeps a gradient where the softmax saturates. Rounding is
    straight-through, the median differentiable through the selected element, non-local means
    has an identity backward (BPDA).

    Arguments:
        detector: the fitted detector; columns: indices of the guarded squeezers (all by
        default); margin, weight, accept_margin: as :class:`Guard`'s; ce_weight: the cross
        entropy's weight.
    """

    detector: FeatureSqueezingDetector

    def __init__(self, detector: FeatureSqueezingDetector, columns: Sequence[int] | None = None,
                 margin: float = 0.9, weight: float = 3.0, ce_weight: float = 0.3,
                 accept_margin: float = 0.98) -> None:
        super().__init__(detector, columns, margin, weight, accept_margin)
        self.ce_weight = ce_weight

    @property
    def squeezers(self) -> list[Squeezer]:
        """The guarded squeezers."""
        return [self.detector.squeezers[c] for c in self.columns]

    def score(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.detector.score_logits(x, logits, self.columns)

    def penalty(self, x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        limits = self.margin * self.thresholds
        active = self.active(x, logits, rows)
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for j, squeezer in enumerate(self.squeezers):
            idx = torch.nonzero(active[:, j]).flatten()
            if idx.numel() == 0:
                continue
            squeezed = self.detector.model(squeezer(x[idx]))
            hinge = (softmax_l1(logits[idx], squeezed) - limits[j]).clamp(min=0)
            cross = -(logits[idx].detach().softmax(dim=1) * squeezed.log_softmax(dim=1)).sum(dim=1)
            total = total.index_add(0, idx, self.weight * hinge + self.ce_weight * cross)
        return total

    def config(self) -> dict[str, Any]:
        return {**super().config(), "ce_weight": self.ce_weight}
