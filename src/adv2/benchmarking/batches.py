"""The benchmarks' attacks: the batch body of ``adv2 attack`` over a list of samples, its
outcomes stacked, and where a supported attack's map misses its target."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from adv2.attack_config import AttackConfig
from adv2.attacks import Attack
from adv2.batch import attack_batch
from adv2.data import Sample
from adv2.interpreters import Interpreter
from adv2.models import Classifier
from adv2.outcome import Outcome
from adv2.records import Failed

#: the outcomes' numbers :func:`run_batches` stacks, and the arrays it keeps when present
NUMBERS = ("success", "confidence", "l1", "passes", "linf", "changed", "l2")
ARRAYS = ("adv", "map", "target_map", "support")


def attack_samples(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                   attack: Attack, samples: list[Sample], tgts: torch.Tensor,
                   batch_size: int) -> tuple[list[Outcome], float]:
    """:func:`~adv2.batch.attack_batch` (the batch body of ``adv2 attack`` and ``adv2 run``)
    over batches of ``samples``.

    Arguments:
        cfg: the settings (target map, support, seed); attack: built from them; tgts: (N,)
        each sample's target class.

    Returns:
        Each image's :class:`~adv2.outcome.Outcome` and the seconds per image. An image that
        failed stops the benchmark (RuntimeError naming it and why).
    """
    outputs = []
    start = time.time()
    for lo in range(0, len(samples), batch_size):
        batch = samples[lo:lo + batch_size]
        outputs += attack_batch(
            cfg, model, interpreter, attack, np.stack([s.image for s in batch]),
            torch.tensor([s.label for s in batch], device=model.device), tgts[lo:lo + batch_size],
            [s.name for s in batch], None)
    seconds = (time.time() - start) / len(samples)
    failed = [f"{s.name}: {o.error}" for s, o in zip(samples, outputs) if isinstance(o, Failed)]
    if failed:
        raise RuntimeError("failed images: " + "; ".join(failed))
    return outputs, seconds


def run_batches(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                attack: Attack, samples: list[Sample], tgts: torch.Tensor,
                batch_size: int) -> tuple[dict, float]:
    """:func:`attack_samples`, each image's outcome stacked.

    Returns:
        ``success``, ``confidence``, ``l1``, ``passes``, ``linf``, ``changed``, ``l2`` (N,)
        and ``iou`` (N×k) host tensors; ``adv`` uint8 images, ``map``, ``target_map`` and, with
        a support, ``support`` arrays; and the seconds per image.
    """
    outcomes, seconds = attack_samples(cfg, model, interpreter, attack, samples, tgts,
                                       batch_size)
    out = {k: torch.tensor([float(getattr(o, k)) for o in outcomes], device="cpu")
           for k in NUMBERS}
    out["iou"] = torch.tensor([o.iou for o in outcomes], device="cpu")
    for key in ARRAYS:
        if getattr(outcomes[0], key) is not None:
            out[key] = np.stack([getattr(o, key) for o in outcomes])
    return out, seconds


def support_fractions(out: dict) -> str:
    """The fraction of the pixels each image's support frees, as text, for ``out`` of
    :func:`run_batches` with a support."""
    return " ".join(f"{v:.2f}" for v in out["support"].reshape(len(out["support"]), -1)
                    .mean(1).tolist())


def error_by_support(out: dict) -> str:
    """Where a supported attack's map misses its target, as text: per image, the mean
    |map − target map| over the map cells the support reaches (any of its pixels non-zero)
    and over the cells it does not (``–`` where every cell is reached), for ``out`` of
    :func:`run_batches` with a support."""
    error = torch.from_numpy(np.abs(out["map"] - out["target_map"])).flatten(1)
    support = torch.from_numpy(out["support"])[:, None]
    reached = (F.adaptive_max_pool2d(support, out["map"].shape[-2:]) > 0).flatten(1)
    inside = (error * reached).sum(1) / reached.sum(1)
    outside = (error * ~reached).sum(1) / (~reached).sum(1)  # nan: every cell reached
    return " ".join(f"{i:.3f}/{'–' if o != o else f'{o:.3f}'}"
                    for i, o in zip(inside.tolist(), outside.tolist()))
