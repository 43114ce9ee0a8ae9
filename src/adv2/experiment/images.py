"""The attacked image set: loaded once, predicted, and given per-image seeded targets.

Every per-image random choice is seeded by :func:`seed_of` (the experiment seed and the image
name), never by the batch, the process rank or the order of work, so resumed and sharded runs
choose the same targets as an uninterrupted single-process run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from adv2.data import load_dataset, to_tensor
from adv2.experiment.config import ConfigError, ExperimentConfig
from adv2.models import Classifier
from adv2.pipeline import choose_targets


def seed_of(seed: int, name: str) -> int:
    """A 32-bit seed from the experiment seed and an image name (stable across runs)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


@dataclass
class ImageSet:
    """The attacked images in list order. ``images`` uint8 N×H×W×3; ``labels`` (the given
    label, else the prediction), ``preds`` and ``targets`` (N,) long; ``skipped``: name → why an
    image is not attacked; ``load_errors``: (file, message) of unreadable files."""

    names: list[str]
    paths: list[str]
    images: np.ndarray
    labels: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    skipped: dict[str, str]
    load_errors: list[tuple[str, str]]

    def index(self, names: list[str]) -> list[int]:
        lookup = {n: i for i, n in enumerate(self.names)}
        return [lookup[n] for n in names]

    @cached_property
    def x(self) -> torch.Tensor:
        """All images as float N×3×H×W in [0,1] (the pool of ``other`` target maps)."""
        return to_tensor(self.images)

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
        }


def prepare(cfg: ExperimentConfig, model: Classifier, chunk: int = 16) -> ImageSet:
    """Load the images, predict them (in fixed chunks, identical in every process) and choose
    each image's target class from its own seed."""
    if cfg.labels is not None and not Path(cfg.labels).is_file():
        raise ConfigError(f"labels: file {cfg.labels} does not exist")
    try:
        samples, errors = load_dataset(cfg.images, cfg.labels, cfg.limit, cfg.image_size)
    except FileNotFoundError as exc:
        raise ConfigError(f"images: {exc}") from exc
    except ValueError as exc:  # a bad label in the CSV, named with its line
        raise ConfigError(f"labels: {exc}") from exc
    if not samples:
        raise ConfigError(f"images: no readable image in {cfg.images}")
    images = np.stack([s.image for s in samples])
    x = to_tensor(images)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    preds = logits.argmax(dim=1)
    labels = torch.tensor([s.label if s.label is not None else int(p)
                           for s, p in zip(samples, preds.tolist())])
    allowed = labels[preds == labels] if cfg.target_map == "other" else None
    tgts, skipped = [], {}
    for i, s in enumerate(samples):
        try:
            t = int(choose_targets(labels[i:i + 1], logits.shape[1], seed_of(cfg.seed, s.name),
                                   cfg.target_class, allowed)[0])
        except ValueError as exc:
            t, skipped[s.name] = -1, str(exc)
        if t == int(labels[i]):
            skipped[s.name] = f"label equals the target class {t}"
        tgts.append(t)
    return ImageSet([s.name for s in samples], [str(s.path) for s in samples], images, labels,
                    preds, torch.tensor(tgts), skipped, errors)
