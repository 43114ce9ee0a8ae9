"""Means over one interpreter × attack's finished records, and the run's line per interpreter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adv2.attacks import DISPLAY_NAMES
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.records import Record, Store


@dataclass
class Stats:
    """Means over one interpreter × attack's finished images (None when there are none)."""

    n: int
    errors: int
    success: float | None
    confidence: float | None
    l1: float | None
    iou_k: list[float] | None
    passes: float | None

    @property
    def iou(self) -> float | None:
        return float(np.mean(self.iou_k)) if self.iou_k else None


def finished(records: dict[str, Record]) -> list[Record]:
    """The records that hold a result (no error)."""
    return [r for r in records.values() if r.error is None]


def stats(records: dict[str, Record]) -> Stats:
    ok = finished(records)
    if not ok:
        return Stats(0, len(records), None, None, None, None, None)

    def mean(key: str) -> float:
        return float(np.mean([r.meta[key] for r in ok]))

    return Stats(len(ok), len(records) - len(ok), mean("success"), mean("confidence"),
                 mean("l1"), np.mean([r.meta["iou"] for r in ok], axis=0).tolist(),
                 mean("passes"))


def interpreter_line(cfg: ExperimentConfig, store: Store, data: ImageSet, interpreter: str,
                     seconds: float) -> str:
    """One line per finished interpreter: success, confidence, L1 and IoU of each attack."""
    parts = []
    for attack in cfg.attacks_for(interpreter):
        s = stats(store.records(f"{interpreter}/{attack}", data.attacked))
        if s.n:
            parts.append(f"{DISPLAY_NAMES[attack]} success {s.success:.3f} conf "
                         f"{s.confidence:.3f} L1 {s.l1:.4f} IoU {s.iou:.3f}")
        else:
            parts.append(f"{DISPLAY_NAMES[attack]} no finished image")
    errors = sum(stats(store.records(f"{interpreter}/{a}", data.attacked)).errors
                 for a in cfg.attacks_for(interpreter))
    return (f"{interpreter}: " + " | ".join(parts)
            + f" ({len(data.attacked)} images, {errors} errors, {seconds:.0f} s)")
