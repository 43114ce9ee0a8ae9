"""The attacked images prepared, as ``adv2 attack``, ``adv2 run`` and the benchmarks prepare
them: predicted, their clean accuracy, their labels and each image's seeded target class
(:func:`prepare_images`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from adv2.attack_config import check_target_class
from adv2.data import Sample, to_tensor
from adv2.models import Classifier
from adv2.target_classes import per_image_targets

log = logging.getLogger(__name__)

#: why an image whose clean logits are not finite is not attacked
NON_FINITE = "non-finite clean logits (NaN or infinity): the model is broken for it"


@dataclass
class Prepared:
    """The images to attack, in list order: uint8 ``images`` N×H×W×3; ``preds``, ``labels``
    (the given label, else the prediction) and ``targets`` (−1 where none) (N,) long on the
    host; ``skipped``: index → why an image is not attacked; ``accuracy``: the clean top-1 of
    the labelled images (None without any)."""

    images: np.ndarray
    preds: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    skipped: dict[int, str]
    accuracy: float | None


def prepare_images(samples: list[Sample], model: Classifier, seed: int,
                   target_class: int | None, target_map: str, chunk: int,
                   where: str) -> Prepared:
    """Predict ``samples`` (``chunk`` at a time), log their clean accuracy (:func:`clean_accuracy`,
    naming ``where``) and draw each image's target class from its own seed
    (:func:`~adv2.target_classes.per_image_targets`; with ``target_map`` ``other``, among the
    classes of the correctly classified images). An image whose target cannot be drawn or
    whose clean logits are not finite is skipped, saying why.

    Raises:
        SettingError: ``target_class`` is not a class of the model.

    Examples:
        >>> prepared = prepare_images(data.samples, model, 0, None, "benign", 8, "photos")
    """
    images = np.stack([s.image for s in samples])
    logits = predict(model, images, chunk)
    n_classes = logits.shape[1]
    check_target_class(target_class, n_classes)
    accuracy = clean_accuracy(logits, [s.label for s in samples], where)
    preds = logits.argmax(dim=1)
    labels = labels_of(samples, preds)
    allowed = labels[preds == labels] if target_map == "other" else None
    targets, why = per_image_targets([s.key for s in samples], labels, n_classes, seed,
                                     target_class, allowed)
    for i, finite in enumerate(torch.isfinite(logits).all(dim=1).tolist()):
        if not finite:
            why[i] = NON_FINITE
    return Prepared(images, preds, labels, targets, why, accuracy)


def predict(model: Classifier, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Logits (N×C) of uint8 images, ``batch_size`` at a time."""
    with torch.no_grad():
        return torch.cat([model(to_tensor(images[i:i + batch_size]).to(model.device))
                          for i in range(0, len(images), batch_size)]).cpu()


def labels_of(samples: list[Sample], preds: torch.Tensor) -> torch.Tensor:
    """Each sample's label, or the model's prediction where it has none."""
    return torch.tensor([s.label if s.label is not None else int(p)
                         for s, p in zip(samples, preds.tolist())], device=preds.device)


def clean_accuracy(logits: torch.Tensor, labels: list[int | None], where: str) -> float | None:
    """Top-1 of the clean images whose label is known (None when none is); logged, with a loud
    warning below 50% (wrong weights or normalisation)."""
    known = [i for i, y in enumerate(labels) if y is not None]
    if not known:
        return None
    preds = logits.argmax(dim=1)[known].tolist()
    accuracy = sum(int(p == labels[i]) for p, i in zip(preds, known)) / len(known)
    log.info("%s: clean top-1 %.3f on the %d images with known labels", where, accuracy,
             len(known))
    if accuracy < 0.5:
        log.warning("%s: the model classifies only %.0f%% of the clean images correctly: are "
                    "the weights and normalisation right?", where, 100 * accuracy)
    return accuracy
