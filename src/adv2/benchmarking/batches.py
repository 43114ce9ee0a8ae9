"""The benchmarks' attacks: the batch body of ``adv2 attack`` over a list of samples (kept
image by image in a work folder, so that a long benchmark resumes), its outcomes stacked, and
where a supported attack's map misses its target."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adv2.attack_config import AttackConfig
from adv2.attacks import Attack
from adv2.batch import attack_batch
from adv2.data import Sample, image_digest
from adv2.interpreters import Interpreter
from adv2.models import Classifier, model_digest
from adv2.outcome import Outcome
from adv2.records import Failed, Store, to_json

#: the outcomes' numbers :func:`run_batches` stacks, and the arrays it keeps when present
NUMBERS = ("success", "confidence", "l1", "passes", "linf", "changed", "l2")
ARRAYS = ("adv", "map", "target_map", "support")


def settings_digest(described: object) -> str:
    """A short stable name for everything a kept result depends on (16 hex digits of the
    SHA-256 of its strict JSON)."""
    return hashlib.sha256(to_json(described).encode()).hexdigest()[:16]


def row_stage(cfg: AttackConfig, model: Classifier, interpreter: Interpreter, attack: Attack,
              tgts: torch.Tensor) -> str:
    """The name a row's records go by in a work folder: a digest of everything its results
    depend on (the settings, the attack's and interpreter's configuration, the targets and the
    model's weights), so that a changed row is recomputed, never read back."""
    described = {"cfg": asdict(cfg), "attack": attack.config(), "interpreter":
                 interpreter.config() if interpreter is not None else None,
                 "targets": tgts.tolist(), "model": model_digest(model)}
    return "row-" + settings_digest(described)


def attack_samples(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                   attack: Attack, samples: list[Sample], tgts: torch.Tensor,
                   batch_size: int, work: Path | None = None) -> tuple[list[Outcome], float]:
    """:func:`~adv2.batch.attack_batch` (the batch body of ``adv2 attack`` and ``adv2 run``)
    over batches of ``samples``.

    Arguments:
        cfg: the settings (target map, support, seed); attack: built from them; tgts: (N,)
        each sample's target class. work: a folder that keeps each image's outcome as it is
        made (:class:`~adv2.records.Store` records under :func:`row_stage`); the same row
        run again reads them back and attacks only the images it lacks (None: keep nothing).

    Returns:
        Each image's :class:`~adv2.outcome.Outcome` and the seconds per image (those of the
        run that made it, for an outcome read back). An image that failed stops the
        benchmark (RuntimeError naming it and why).
    """
    store = None if work is None else Store(work, "rows")
    stage = None if store is None else row_stage(cfg, model, interpreter, attack, tgts)
    done: dict[int, tuple[Outcome, float]] = {}
    for i, s in enumerate(samples if store is not None else []):
        record = store.load(stage, s.key, image_digest(s.image))
        if record is not None and record.error is None:
            done[i] = Outcome.from_record(record), float(record.meta["seconds"])
    todo = [i for i in range(len(samples)) if i not in done]
    failed = []
    for lo in range(0, len(todo), batch_size):
        rows = todo[lo:lo + batch_size]
        batch = [samples[i] for i in rows]
        start = time.time()
        outcomes = attack_batch(
            cfg, model, interpreter, attack, np.stack([s.image for s in batch]),
            torch.tensor([s.label for s in batch], device=model.device), tgts[rows],
            [s.name for s in batch], None)
        seconds = (time.time() - start) / len(batch)
        for i, s, outcome in zip(rows, batch, outcomes):
            if isinstance(outcome, Failed):
                failed.append(f"{s.name}: {outcome.error}")
                continue
            done[i] = outcome, seconds
            if store is not None:
                arrays, meta = outcome.to_record()
                store.save(stage, s.key, arrays, meta | {"seconds": seconds,
                                                         "input": image_digest(s.image)})
    if failed:
        raise RuntimeError("failed images: " + "; ".join(failed))
    return ([done[i][0] for i in range(len(samples))],
            sum(done[i][1] for i in range(len(samples))) / len(samples))


def run_batches(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                attack: Attack, samples: list[Sample], tgts: torch.Tensor,
                batch_size: int, work: Path | None = None) -> tuple[dict, float]:
    """:func:`attack_samples` (``work``: its work folder), each image's outcome stacked.

    Returns:
        ``success``, ``confidence``, ``l1``, ``passes``, ``linf``, ``changed``, ``l2`` (N,)
        and ``iou`` (N×k) host tensors; ``adv`` uint8 images, ``map``, ``target_map`` and, with
        a support, ``support`` arrays; and the seconds per image.
    """
    outcomes, seconds = attack_samples(cfg, model, interpreter, attack, samples, tgts,
                                       batch_size, work)
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
