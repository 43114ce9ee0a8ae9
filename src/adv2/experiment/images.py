"""The attacked image set: loaded once, then predicted and given per-image seeded targets as
``adv2 attack`` prepares its images (:func:`adv2.preparation.prepare_images`).

Every per-image random choice is seeded by :func:`adv2.target_classes.seed_of` (the experiment seed
and the image's key), never by the batch, the process rank or the order of work, so resumed and
sharded runs choose the same targets as an uninterrupted single-process run, and as
``adv2 attack`` with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adv2.attack_maps import Pool
from adv2.data import load_dataset
from adv2.errors import SettingError
from adv2.experiment.config import ConfigError, ExperimentConfig
from adv2.models import Classifier
from adv2.preparation import prepare_images
from adv2.records import input_digest


@dataclass
class ImageSet:
    """The attacked images in list order. ``images`` uint8 N×H×W×3; ``labels`` (the given
    label, else the prediction), ``preds`` and ``targets`` (N,) long; ``digests``: name → digest
    of its picture; ``skipped``: name → why an image is not attacked; ``load_errors``: (file,
    message) of unreadable files; ``ignored``: (file, reason) of other files passed over."""

    names: list[str]
    paths: list[str]
    images: np.ndarray
    labels: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    digests: dict[str, str]
    skipped: dict[str, str]
    load_errors: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    clean_accuracy: float | None = None
    _pools: dict[torch.device, Pool] = field(default_factory=dict, repr=False)

    def index(self, names: list[str]) -> list[int]:
        lookup = {n: i for i, n in enumerate(self.names)}
        return [lookup[n] for n in names]

    def pool(self, device: torch.device) -> Pool:
        """All images, labels and predictions on ``device``: the pool of ``other`` target
        maps (made once per device)."""
        if device not in self._pools:
            self._pools[device] = Pool.of(self.images, self.labels, self.preds, device)
        return self._pools[device]

    @property
    def attacked(self) -> list[str]:
        return [n for n in self.names if n not in self.skipped]

    def manifest(self) -> dict:
        """What ``images.json`` holds: every image (name, path, label, prediction, target,
        why it is skipped, its picture's digest), the unreadable and ignored files and the
        clean top-1."""
        return {
            "images": [{"name": n, "path": p, "label": int(y), "pred": int(q), "target": int(t),
                        "skipped": self.skipped.get(n), "digest": self.digests.get(n)}
                       for n, p, y, q, t in zip(self.names, self.paths, self.labels.tolist(),
                                                self.preds.tolist(), self.targets.tolist())],
            "load_errors": [{"file": f, "error": e} for f, e in self.load_errors],
            "ignored": [{"file": f, "reason": r} for f, r in self.ignored],
            "clean_accuracy": self.clean_accuracy,
        }


def prepare(cfg: ExperimentConfig, model: Classifier, chunk: int = 16) -> ImageSet:
    """Load the images, predict them (in fixed chunks, identical in every process) and choose
    each image's target class from its own seed."""
    if cfg.labels is not None and not Path(cfg.labels).is_file():
        raise ConfigError(f"labels: file {cfg.labels} does not exist")
    try:
        data = load_dataset(cfg.images, cfg.labels, cfg.limit, cfg.image_size)
    except FileNotFoundError as exc:
        raise ConfigError(f"images: {exc}") from exc
    except ValueError as exc:  # a bad label in the CSV, named with its line
        raise ConfigError(f"labels: {exc}") from exc
    samples = data.samples
    if not samples:
        raise ConfigError(f"images: no readable image in {cfg.images}")
    try:
        p = prepare_images(samples, model, cfg.seed, cfg.target_class, cfg.target_map, chunk,
                           str(cfg.images))
    except SettingError as exc:  # a target class the model lacks
        raise ConfigError(str(exc)) from None
    return ImageSet([s.name for s in samples], [str(s.path) for s in samples], p.images,
                    p.labels, p.preds, p.targets,
                    {s.name: input_digest(s.digest, int(p.labels[i]), int(p.targets[i]))
                     for i, s in enumerate(samples)},
                    {samples[i].name: reason for i, reason in sorted(p.skipped.items())},
                    data.errors, data.ignored, p.accuracy)
