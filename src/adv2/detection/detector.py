"""The detector protocol: score inputs, fit thresholds at a false-positive rate, decide, keep
the fitted state, and guard adaptive attacks.

A detector's scores are n×S, one column per score it computes (a squeezer, the ensemble's
inconsistency); the thresholds, the joint score and the held-out false-positive rate are
:mod:`adv2.detection.thresholds`'.
"""

from __future__ import annotations

import inspect
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from adv2.data import to_tensor
from adv2.detection.thresholds import Detection, ThresholdFit, Thresholds, fit_thresholds
from adv2.errors import SettingError
from adv2.models import device_of
from adv2.records import write_json

if TYPE_CHECKING:
    from adv2.detection.guard import Guard


class NotFittedError(RuntimeError):
    """The detector has no thresholds yet: call ``fit`` or ``load`` first."""


class Detector(ABC):
    """Scores inputs; flags those whose joint score is above a threshold fitted on benign ones.

    A detector is registered by ``name`` in :data:`adv2.detection.DETECTORS`; every setting is
    a keyword of ``__init__`` (after the model) and :meth:`settings` returns them, so that
    :meth:`load` rebuilds it from the file :meth:`save` writes.

    Arguments:
        model: the classifier (None: thresholds and decisions from precomputed scores only).
        batch_size: images scored at once.

    Shape:
        images: uint8 n×H×W×3 arrays or float n×3×H×W tensors in [0,1]; scores n×S.

    Examples:
        >>> detector = DETECTORS["squeeze"](model, ["bit-3"]).fit(benign)  # doctest: +SKIP
        >>> detector.detect(images).joint_flag                             # doctest: +SKIP
    """

    #: the registry name (``--detector squeeze``)
    name: ClassVar[str] = "detector"

    def __init__(self, model: torch.nn.Module | None, batch_size: int = 32) -> None:
        self.model = model
        self.batch_size = batch_size
        #: the score columns' names
        self.names: list[str] = []
        #: the fitted state (None before ``fit`` or ``load``)
        self.calibration: Thresholds | None = None
        #: wall seconds per input of the last :meth:`scores` call (None before one)
        self.seconds_per_input: float | None = None

    @classmethod
    def setting_defaults(cls) -> dict[str, Any]:
        """Each setting (a keyword of ``__init__`` besides ``model`` and ``batch_size``) and its
        default."""
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return {p.name: p.default for p in parameters if p.name not in ("model", "batch_size")}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Refuse settings this detector does not take, without a model: a
        :class:`~adv2.errors.SettingError` naming the first unknown key (subclasses check the
        values too)."""
        known = cls.setting_defaults()
        for key in settings:
            if key not in known:
                raise SettingError(key, f"the {cls.name} detector has no setting {key!r}; its "
                                        f"settings are {', '.join(known) or 'none'}")

    @abstractmethod
    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        """n×S scores of float images x (n×3×H×W on the model's device, uint8 lattice)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this detector (JSON-ready)."""

    @abstractmethod
    def guard(self, columns: Sequence[int] | None = None, margin: float = 0.9,
              weight: float = 3.0) -> Guard:
        """The adaptive attack's hooks against the fitted scores at ``columns`` (all by
        default): a differentiable penalty on scores above ``margin`` × threshold, weighted by
        ``weight``, and the "undetected" test (:class:`~adv2.detection.guard.Guard`)."""

    @property
    def fitted(self) -> bool:
        return self.calibration is not None

    @property
    def thresholds(self) -> torch.Tensor | None:
        """The (S,) thresholds of the score columns (None before fitting)."""
        return None if self.calibration is None else self.calibration.columns

    @property
    def joint_threshold(self) -> float | None:
        """The joint score's threshold (None before fitting)."""
        return None if self.calibration is None else self.calibration.joint

    @property
    def fpr(self) -> float | None:
        """The false-positive rate the thresholds were fitted at (None before fitting)."""
        return None if self.calibration is None else self.calibration.fpr

    def scores(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """n×S scores of uint8 n×H×W×3 images (or float n×3×H×W tensors), without gradients
        with respect to the images; records :attr:`seconds_per_input`."""
        device = device_of(self.model)
        x = to_tensor(images) if isinstance(images, np.ndarray) else images
        start = time.perf_counter()
        with torch.no_grad():
            parts = [self.score_batch(x[i:i + self.batch_size].to(device))
                     for i in range(0, len(x), self.batch_size)]
        if len(x):
            self.seconds_per_input = (time.perf_counter() - start) / len(x)
        return torch.cat(parts) if parts else torch.zeros(0, len(self.names), device=device)

    def fit(self, benign: np.ndarray | torch.Tensor, fpr: float = 0.05) -> Detector:
        """Set each column's threshold and the joint threshold so that at most a fraction
        ``fpr`` of the ``benign`` images score above it. Returns self."""
        return self.fit_scores(self.scores(benign), fpr)

    def fit_scores(self, scores: torch.Tensor, fpr: float = 0.05) -> Detector:
        """:meth:`fit` from precomputed n×S benign ``scores`` (columns in :attr:`names`
        order)."""
        self.fit_held_out(scores, fpr, folds=0)
        return self

    def fit_held_out(self, scores: torch.Tensor, fpr: float = 0.05, folds: int = 10,
                     seed: int = 0) -> ThresholdFit:
        """:meth:`fit_scores`, returning the thresholds with each benign image's held-out flags
        by a seeded ``folds``-fold cross-validation
        (:func:`~adv2.detection.thresholds.fit_thresholds`; none for ``folds`` < 2)."""
        if scores.ndim != 2 or scores.shape[1] != len(self.names):
            raise ValueError(f"expected n×{len(self.names)} scores, got {tuple(scores.shape)}")
        fit = fit_thresholds(scores, fpr, folds, seed)
        self.calibration = fit.thresholds
        return fit

    def set_thresholds(self, thresholds: Sequence[float], joint: float, fpr: float) -> None:
        """Install thresholds (one per column, in order) and the joint threshold."""
        if len(thresholds) != len(self.names):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self.names)} score columns "
                             f"({', '.join(self.names)})")
        self.calibration = Thresholds(torch.tensor([float(t) for t in thresholds],
                                                   device=device_of(self.model)),
                                      float(joint), float(fpr))

    def check_fitted(self) -> torch.Tensor:
        """The (S,) thresholds; raises :class:`NotFittedError` before ``fit``/``load``."""
        if self.calibration is None:
            raise NotFittedError(f"the {self.name} detector is not fitted: call fit(benign) "
                                 "or load a thresholds file first")
        return self.calibration.columns

    def decide(self, scores: torch.Tensor) -> Detection:
        """Flags for precomputed n×S ``scores``."""
        self.check_fitted()
        return self.calibration.decide(scores)

    def detect(self, images: np.ndarray | torch.Tensor) -> Detection:
        """Scores and flags of uint8 n×H×W×3 images (or float n×3×H×W tensors)."""
        self.check_fitted()
        return self.decide(self.scores(images))

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-ready data: the detector's name, its settings, the columns'
        names and thresholds, the joint threshold and the false-positive rate."""
        thresholds = self.check_fitted()
        return {"detector": self.name, **self.settings(), "columns": self.names,
                "thresholds": thresholds.tolist(), "joint_threshold": self.joint_threshold,
                "fpr": self.fpr}

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as a small JSON file."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def from_state(cls, model: torch.nn.Module | None, state: dict[str, Any],
                   batch_size: int = 32) -> Detector:
        """A fitted detector for ``model`` from :meth:`to_dict`'s data."""
        if state.get("detector", cls.name) != cls.name:
            raise ValueError(f"the file holds a {state['detector']!r} detector, not {cls.name!r}")
        reserved = {"detector", "columns", "thresholds", "joint_threshold", "fpr"}
        detector = cls(model, **{k: v for k, v in state.items() if k not in reserved},
                       batch_size=batch_size)
        detector.set_thresholds(state["thresholds"], state["joint_threshold"], state["fpr"])
        return detector

    @classmethod
    def load(cls, model: torch.nn.Module | None, path: str | Path,
             batch_size: int = 32) -> Detector:
        """A fitted detector for ``model`` from a file written by :meth:`save`."""
        try:
            return cls.from_state(model, json.loads(Path(path).read_text()), batch_size)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read detector thresholds from {path}: {exc}") from exc
