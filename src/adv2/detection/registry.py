"""The detectors by the names the CLI and experiment files use (``--detector squeeze``).

Adding a detector is its own module (a subclass of :class:`~adv2.detection.detector.Detector`)
and one line of :data:`DETECTORS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from adv2.detection.detector import Detector
from adv2.detection.ensemble import EnsembleDetector
from adv2.detection.squeezing import FeatureSqueezingDetector
from adv2.errors import SettingError

DETECTORS: dict[str, type[Detector]] = {
    "squeeze": FeatureSqueezingDetector,
    "ensemble": EnsembleDetector,
}


def detector_class(name: str) -> type[Detector]:
    """The registered detector ``name``; a :class:`~adv2.errors.SettingError` (key
    ``detector``) naming it and the known ones otherwise."""
    if name not in DETECTORS:
        raise SettingError("detector", f"unknown detector {name!r}; the detectors are "
                                       f"{', '.join(DETECTORS)}")
    return DETECTORS[name]


def build_detector(name: str, model: torch.nn.Module | None,
                   settings: Mapping[str, Any] | None = None, batch_size: int = 32) -> Detector:
    """An unfitted detector ``name`` for ``model`` with ``settings`` (keywords of its class)
    over its defaults; a :class:`~adv2.errors.SettingError` naming a bad key.

    Examples:
        >>> build_detector("ensemble", model, {"interpreters": ["cam", "rts"]})  # doctest: +SKIP
    """
    cls = detector_class(name)
    settings = dict(settings or {})
    cls.check_settings(settings)
    return cls(model, **settings, batch_size=batch_size)


def load_detector(model: torch.nn.Module | None, path: str | Path,
                  batch_size: int = 32) -> Detector:
    """The fitted detector a file of :meth:`Detector.save` holds, whichever registered one it
    is (its ``detector`` key); a ValueError naming the file otherwise."""
    try:
        state = json.loads(Path(path).read_text())
        cls = detector_class(state["detector"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read detector thresholds from {path}: {exc}") from exc
    return cls.load(model, path, batch_size)
