"""The attacked image set: loaded once, predicted, and given per-image seeded targets.

Every per-image random choice is seeded by :func:`adv2.pipeline.seed_of` (the experiment seed
and the image's key), never by the batch, the process rank or the order of work, so resumed and
sharded runs choose the same targets as an uninterrupted single-process run, and as
``adv2 attack`` with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adv2.data import load_dataset, sample_key, to_tensor
from adv2.experiment.config import ConfigError, ExperimentConfig
from adv2.models import Classifier
from adv2.pipeline import Pool, clean_accuracy, labels_of, per_image_targets, predict


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
            self._pools[device] = Pool(to_tensor(self.images).to(device),
                                       self.labels.to(device), self.preds.to(device))
        return self._pools[device]

    def keys(self, names: list[str]) -> list[str]:
        return [sample_key(n) for n in names]

    @property
    def attacked(self) -> list[str]:
        return [n for n in self.names if n not in self.skipped]

    def manifest(self) -> dict:
        return {
            "images": [{"name": n, "path": p, "label": int(y), "pred": int(q), "target": int(t),
                        "skipped": self.skipped.get(n)}
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
    images = np.stack([s.image for s in samples])
    logits = predict(model, images, chunk)
    n_classes = logits.shape[1]
    if cfg.target_class is not None and not 0 <= cfg.target_class < n_classes:
        raise ConfigError(f"target_class: must be a class index in [0, {n_classes - 1}] of the "
                          f"model, got {cfg.target_class}")
    accuracy = clean_accuracy(logits, [s.label for s in samples], str(cfg.images))
    preds = logits.argmax(dim=1)
    labels = labels_of(samples, preds)
    allowed = labels[preds == labels] if cfg.target_map == "other" else None
    tgts, why = per_image_targets([s.key for s in samples], labels, n_classes, cfg.seed,
                                  cfg.target_class, allowed)
    for i, finite in enumerate(torch.isfinite(logits).all(dim=1).tolist()):
        if not finite:
            why[i] = "non-finite clean logits (NaN or infinity): the model is broken for it"
    return ImageSet([s.name for s in samples], [str(s.path) for s in samples], images, labels,
                    preds, tgts, {s.name: s.digest for s in samples},
                    {samples[i].name: reason for i, reason in sorted(why.items())},
                    data.errors, data.ignored, accuracy)
