"""Feature-squeezing detection (Xu et al., NDSS 2018), in the style of ART's evasion detectors.

The score of an image for a squeezer ψ is ‖softmax(f(x)) − softmax(f(ψ(x)))‖₁ ∈ [0, 2]; the
joint score is the maximum over the squeezers. ``fit`` sets each threshold so that a chosen
fraction (the false-positive rate) of benign images scores above it; ``detect`` flags scores
above the thresholds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from adv2.data import to_tensor
from adv2.detection.squeezers import Squeezer, build_squeezer
from adv2.models import device_of
from adv2.records import write_json


class NotFittedError(RuntimeError):
    """The detector has no thresholds yet: call ``fit`` or ``load`` first."""


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """The smallest observed score t with at most ⌊fpr·n⌋ of the n ``scores`` above it
    (the ⌈(1 − fpr)·n⌉-th smallest score); ``fpr`` in [0, 1)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"false-positive rate must be in [0, 1), got {fpr}")
    if scores.numel() == 0:
        raise ValueError("no benign scores to set a threshold from")
    ordered = scores.flatten().sort().values
    k = max(math.ceil((1 - fpr) * len(ordered) - 1e-9), 1)
    return float(ordered[k - 1])


def cross_validated_flags(scores: torch.Tensor, fpr: float, folds: int = 10,
                          seed: int = 0) -> torch.Tensor:
    """n×S bool: each benign image's flags under thresholds fitted (:func:`threshold_at_fpr`,
    column by column) on the other folds of a seeded ``folds``-fold split of the n×S benign
    ``scores``. Their column means are the held-out false-positive rates of the fitting
    procedure, measured on every benign image once."""
    n = len(scores)
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 ≤ folds ≤ {n} benign images, got {folds} folds")
    fold = torch.from_numpy(np.random.default_rng(seed).permutation(n) % folds).to(scores.device)
    flags = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for k in range(folds):
        held = fold == k
        fit = scores[~held]
        thresholds = torch.tensor([threshold_at_fpr(fit[:, j], fpr) for j in range(fit.shape[1])],
                                  device=scores.device)
        flags[held] = scores[held] > thresholds
    return flags


def softmax_l1(logits: torch.Tensor, squeezed_logits: torch.Tensor) -> torch.Tensor:
    """(n,) L1 distances between the softmax vectors of two n×C logit batches."""
    return (logits.softmax(dim=1) - squeezed_logits.softmax(dim=1)).abs().sum(dim=1)


@dataclass
class Detection:
    """``scores`` n×S (one column per squeezer), ``joint`` (n,) their maximum, ``flags`` n×S and
    ``joint_flag`` (n,) bool: score above the fitted threshold."""

    scores: torch.Tensor
    joint: torch.Tensor
    flags: torch.Tensor
    joint_flag: torch.Tensor


class FeatureSqueezingDetector:
    """Flags inputs whose prediction moves under squeezing.

    ``squeezers``: :class:`Squeezer` modules or their names (``bit-3``, ``median-2x2``,
    ``nlm-11-3-4``, ...). Images are uint8 n×H×W×3 arrays or float n×3×H×W tensors in [0,1].
    """

    def __init__(self, model: torch.nn.Module, squeezers: Sequence[Squeezer | str],
                 batch_size: int = 32) -> None:
        if not squeezers:
            raise ValueError("a feature-squeezing detector needs at least one squeezer")
        self.model = model
        self.squeezers = [build_squeezer(s) if isinstance(s, str) else s for s in squeezers]
        self.names = [s.name for s in self.squeezers]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate squeezers in {self.names}")
        self.batch_size = batch_size
        self.thresholds: torch.Tensor | None = None  # (S,)
        self.joint_threshold: float | None = None
        self.fpr: float | None = None

    @property
    def fitted(self) -> bool:
        return self.thresholds is not None

    def score_logits(self, x: torch.Tensor, logits: torch.Tensor | None = None,
                     columns: Sequence[int] | None = None) -> torch.Tensor:
        """n×len(columns) scores of float images x (n×3×H×W on the uint8 lattice), for the
        squeezers at ``columns`` (all by default); differentiable when x requires grad (rounding
        straight-through, NLM identity backward). ``logits``: f(x) if already computed."""
        logits = self.model(x) if logits is None else logits
        cols = range(len(self.squeezers)) if columns is None else columns
        return torch.stack([softmax_l1(logits, self.model(self.squeezers[c](x))) for c in cols],
                           dim=1)

    def scores(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """n×S scores of uint8 n×H×W×3 images (or float n×3×H×W tensors), without gradients."""
        device = device_of(self.model)
        x = to_tensor(images) if isinstance(images, np.ndarray) else images
        with torch.no_grad():
            parts = [self.score_logits(x[i:i + self.batch_size].to(device))
                     for i in range(0, len(x), self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.squeezers), device=device)

    def fit(self, benign: np.ndarray | torch.Tensor, fpr: float = 0.05) -> FeatureSqueezingDetector:
        """Set each squeezer's threshold and the joint threshold so that at most a fraction
        ``fpr`` of the ``benign`` images score above it. Returns self."""
        return self.fit_scores(self.scores(benign), fpr)

    def fit_scores(self, scores: torch.Tensor, fpr: float = 0.05) -> FeatureSqueezingDetector:
        """:meth:`fit` from precomputed n×S benign ``scores`` (columns in squeezer order)."""
        if scores.ndim != 2 or scores.shape[1] != len(self.squeezers):
            raise ValueError(f"expected n×{len(self.squeezers)} scores, got {tuple(scores.shape)}")
        self.set_thresholds([threshold_at_fpr(scores[:, j], fpr) for j in range(scores.shape[1])],
                            threshold_at_fpr(scores.amax(dim=1), fpr), fpr)
        return self

    def set_thresholds(self, thresholds: Sequence[float], joint: float, fpr: float) -> None:
        """Install thresholds (one per squeezer, in order) and the joint threshold."""
        if len(thresholds) != len(self.squeezers):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self.squeezers)} squeezers")
        self.thresholds = torch.tensor([float(t) for t in thresholds],
                                       device=device_of(self.model))
        self.joint_threshold = float(joint)
        self.fpr = float(fpr)

    def check_fitted(self) -> torch.Tensor:
        """The (S,) thresholds; raises :class:`NotFittedError` before ``fit``/``load``."""
        if self.thresholds is None:
            raise NotFittedError("the feature-squeezing detector is not fitted: call fit(benign) "
                                 "or load a thresholds file first")
        return self.thresholds

    def decide(self, scores: torch.Tensor) -> Detection:
        """Flags for precomputed n×S ``scores``."""
        thresholds = self.check_fitted().to(scores.device)
        joint = scores.amax(dim=1)
        return Detection(scores, joint, scores > thresholds, joint > self.joint_threshold)

    def detect(self, images: np.ndarray | torch.Tensor) -> Detection:
        """Scores and flags of uint8 n×H×W×3 images (or float n×3×H×W tensors)."""
        self.check_fitted()
        return self.decide(self.scores(images))

    def to_dict(self) -> dict:
        """The fitted state as JSON-ready data."""
        thresholds = self.check_fitted()
        return {"squeezers": self.names, "thresholds": thresholds.tolist(),
                "joint_threshold": self.joint_threshold, "fpr": self.fpr}

    def save(self, path: str | Path) -> None:
        """Write the squeezer names and thresholds as a small JSON file."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, model: torch.nn.Module, path: str | Path,
             batch_size: int = 32) -> FeatureSqueezingDetector:
        """A fitted detector for ``model`` from a file written by :meth:`save`."""
        try:
            state = json.loads(Path(path).read_text())
            detector = cls(model, state["squeezers"], batch_size)
            detector.set_thresholds(state["thresholds"], state["joint_threshold"], state["fpr"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read detector thresholds from {path}: {exc}") from exc
        return detector
