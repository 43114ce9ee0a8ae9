"""Per-sample losses for the attack engine.

Every loss returns a tensor of shape (N,), one value per image. The engine minimises, for each
image i, ``pred_loss_i + λ · map_loss_i`` and differentiates the *sum* over the batch, so every
image gets the gradient of its own loss, whatever the batch size or which images are still
active. ``map_loss_i`` is a mean over the map's cells at the interpreter's native resolution,
so for a given map loss λ does not depend on the map's resolution. Reported batch losses are
means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from adv2.metrics import margin


class PredictionLoss(ABC):
    """Loss that is small when ``logits`` (N×C) predict ``targets`` (N,)."""

    @abstractmethod
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


class CrossEntropy(PredictionLoss):
    """Cross-entropy to the target class (the paper's ℓ_prd)."""

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


class CWMargin(PredictionLoss):
    """Carlini–Wagner margin max(max_{j≠t} z_j − z_t, −κ): no pull once the target leads by κ,
    which leaves the interpretation term alone in charge."""

    def __init__(self, kappa: float = 3.0) -> None:
        self.kappa = kappa

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (-margin(logits, targets)).clamp(min=-self.kappa)


class LabelSmoothing(PredictionLoss):
    """Cross-entropy to a smoothed label: ``confidence`` on the target, the rest spread evenly
    over the other C−1 classes (so the label sums to 1 for any C)."""

    def __init__(self, confidence: float = 0.95) -> None:
        self.confidence = confidence

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[1]
        rest = (1.0 - self.confidence) / (n_classes - 1)
        label = torch.full_like(logits, rest).scatter(1, targets.view(-1, 1), self.confidence)
        return -(label * logits.log_softmax(dim=1)).sum(dim=1)


class MapLoss(ABC):
    """Distance between maps N×1×h×w and target maps of the same shape, per sample."""

    @abstractmethod
    def __call__(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


class MapMSE(MapLoss):
    """Mean over cells of the squared difference."""

    def __call__(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (maps - targets).pow(2).flatten(1).mean(dim=1)


class MapL1(MapLoss):
    """Mean over cells of the absolute difference."""

    def __call__(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (maps - targets).abs().flatten(1).mean(dim=1)


class MapLogitMSE(MapLoss):
    """Mean over cells of the squared difference of the maps' logits, log(m / (1 − m)), with m
    clipped to [eps, 1 − eps] (logits within ±13.8 for the default eps: a clipped cell counts
    with the clipped value and passes no gradient, which bounds the loss). For maps that are
    sigmoids (RTS) it compares the order of cells near 0 and 1, which MSE on the values
    hardly sees but top-k% IoU counts. Its scale differs from MSE's: λ is retuned for it."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def __call__(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        m, t = (torch.logit(v.clamp(self.eps, 1 - self.eps)) for v in (maps, targets))
        return (m - t).pow(2).flatten(1).mean(dim=1)


PREDICTION_LOSSES = {"ce": CrossEntropy, "cw": CWMargin, "smooth": LabelSmoothing}
MAP_LOSSES = {"mse": MapMSE, "l1": MapL1, "logit": MapLogitMSE}
