"""The benchmarks' images: the sample folder, the interpreter plan, the seeded choice of
correctly classified images, their targets and their tensors on the model's device."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from adv2.data import Sample, load_dataset, to_tensor
from adv2.models import Classifier
from adv2.preparation import prepare_images


def default_images(script: str | Path) -> Path:
    """The ImageNet sample beside the checkout that holds ``script`` (a file in a folder of the
    repository root): ``../shared/data/imagenet-sample``.

    Examples:
        >>> default_images("/srv/adv2/benchmarks/attack_benchmark.py")
        PosixPath('/srv/shared/data/imagenet-sample')
    """
    return Path(script).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def images_missing(folder: Path, needs: str = "the benchmark") -> bool:
    """Whether ``folder`` is absent, saying so on stderr (the scripts then exit 1)."""
    if folder.is_dir():
        return False
    print(f"{folder} not found: {needs} needs the ImageNet sample", file=sys.stderr)
    return True


def interpreter_plan(specs: list[str]) -> list[tuple[str, int]]:
    """``NAME:N`` texts as (interpreter name, number of images) pairs.

    Examples:
        >>> interpreter_plan(["cam:20", "grad:8"])
        [('cam', 20), ('grad', 8)]
    """
    return [(spec.split(":")[0], int(spec.split(":")[1])) for spec in specs]


def pick_images(model: Classifier, folder: Path, n: int, seed: int,
                exclude: frozenset[str] = frozenset()) -> list[Sample]:
    """The first n correctly classified images of a seeded permutation of the folder, skipping
    the sample keys in ``exclude`` (the images a trained interpreter was fitted on)."""
    samples = load_dataset(folder).samples
    order = np.random.default_rng(seed).permutation(len(samples))
    chosen = []
    with torch.no_grad():
        for i in order:
            s = samples[i]
            logits = model(to_tensor(s.image).to(model.device))
            if s.key not in exclude and int(logits.argmax()) == s.label:
                chosen.append(s)
            if len(chosen) == n:
                break
    return chosen


def image_targets(model: Classifier, samples: list[Sample], seed: int) -> torch.Tensor:
    """Each sample's target class as ``adv2 attack`` and ``adv2 run`` draw it
    (:func:`~adv2.preparation.prepare_images` with the seed, benign target maps and no fixed
    class), on the model's device. The samples come from ``load_dataset`` of the images
    folder, so their keys are those that ``adv2 attack --images <folder>`` uses. An image
    without a target stops the benchmark.

    Shape:
        (N,) class indices for N samples.
    """
    prepared = prepare_images(samples, model, seed, None, "benign", 16, "benchmark")
    if prepared.skipped:
        raise RuntimeError("images without a target class: " + "; ".join(
            f"{samples[i].name}: {reason}" for i, reason in sorted(prepared.skipped.items())))
    return prepared.targets.to(model.device)


def stacked(model: Classifier, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples' images and labels on the model's device.

    Shape:
        images N×3×H×W in [0, 1], labels (N,).
    """
    x = to_tensor(np.stack([s.image for s in samples])).to(model.device)
    return x, torch.tensor([s.label for s in samples], device=model.device)
