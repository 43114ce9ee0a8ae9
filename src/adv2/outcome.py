"""The judged outcome of one attacked image: what :func:`adv2.batch.attack_batch` returns per
image, what its record holds (:meth:`Outcome.to_record`, :meth:`Outcome.from_record`), and what
the output folder, the experiment stages and the benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adv2.records import Record

#: the arrays of an outcome's record, in the order they are written
ARRAYS = ("adv", "map", "benign", "target_map", "support")


@dataclass(frozen=True)
class Distance:
    """One interpreter's distance of its judged map to its target map.

    Arguments:
        l1: the L1 distance; iou: the top-k% IoU per k; shape: its map's h×w (None in a
            record written without it).
    """

    l1: float
    iou: list[float]
    shape: list[int] | None = None

    @property
    def iou_mean(self) -> float:
        return float(np.mean(self.iou))


@dataclass(frozen=True)
class Seeds:
    """A stochastic interpreter's seeds for one image: the attack's draws and the judge's
    (:func:`~adv2.target_classes.interpreter_seeds`)."""

    attack: int
    judge: int


@dataclass(frozen=True, eq=False)
class Outcome:
    """One attacked image, judged by the true interpreter on its uint8 adversarial image.

    Arguments:
        label, target, pred: classes (the image's label, the attack's target, the prediction
            on the adversarial image); confidence: p(target); success: the attack's criterion;
        l1, iou: the map's distance to the target map (``iou`` per k; for a joint
            interpreter, the means over its members); passes: forward + backward passes spent;
        linf: ‖δ‖∞ in uint8 units; changed: the fraction of pixels changed; l2: ‖δ‖₂ in [0,1]
            units; per_interpreter: each interpreter's :class:`Distance` (None in a record
            written without it, see :meth:`distances`).
        adv: the uint8 adversarial image; map, benign, target_map: its map, the benign map
            and the target map (h×w float32, a joint interpreter's members concatenated);
            support: the pixels the attack could change (H×W; None without a support).
        queries: the oracle queries spent (black-box attacks); seeds: a stochastic
            interpreter's; clean_pred: the prediction on the clean image (``adv2 attack``).

    Shape:
        adv H×W×3; map, benign, target_map h×w; support H×W.
    """

    label: int
    target: int
    pred: int
    confidence: float
    success: bool
    l1: float
    iou: list[float]
    passes: int
    linf: int
    changed: float
    l2: float
    per_interpreter: dict[str, Distance] | None
    adv: np.ndarray
    map: np.ndarray
    benign: np.ndarray
    target_map: np.ndarray
    support: np.ndarray | None = None
    queries: int | None = None
    seeds: Seeds | None = None
    clean_pred: int | None = None

    @property
    def iou_mean(self) -> float:
        return float(np.mean(self.iou))

    def distances(self, default: str) -> dict[str, Distance]:
        """Each interpreter's distance; for a record written without them, those of its
        single interpreter, named ``default``."""
        return self.per_interpreter or {default: Distance(self.l1, self.iou)}

    def to_record(self) -> tuple[dict[str, np.ndarray], dict]:
        """The record's arrays and JSON meta (:meth:`adv2.records.Store.save`).

        Examples:
            >>> arrays, meta = outcome.to_record()
            >>> Outcome.from_record(Record(name, meta, arrays)).to_record()[1] == meta
            True
        """
        meta = {"label": self.label, "target": self.target, "pred": self.pred,
                "confidence": self.confidence, "success": self.success, "l1": self.l1,
                "iou": self.iou, "passes": self.passes, "linf": self.linf,
                "changed": self.changed, "l2": self.l2}
        if self.per_interpreter is not None:
            meta["per_interpreter"] = {n: {"l1": d.l1, "iou": d.iou}
                                       | ({} if d.shape is None else {"shape": d.shape})
                                       for n, d in self.per_interpreter.items()}
        if self.queries is not None:
            meta["queries"] = self.queries
        if self.seeds is not None:
            meta["interpreter_seed"], meta["judge_seed"] = self.seeds.attack, self.seeds.judge
        if self.clean_pred is not None:
            meta["clean_pred"] = self.clean_pred
        arrays = {k: getattr(self, k) for k in ARRAYS if getattr(self, k) is not None}
        return arrays, meta

    @classmethod
    def from_record(cls, record: Record) -> Outcome:
        """The outcome a finished record holds (any keys it has beyond those, such as its
        picture's digest ``input``, are the record's)."""
        m, arrays = record.meta, record.arrays
        parts = m.get("per_interpreter")
        seeds = Seeds(m["interpreter_seed"], m["judge_seed"]) if "judge_seed" in m else None
        return cls(label=m["label"], target=m["target"], pred=m["pred"],
                   confidence=m["confidence"], success=m["success"], l1=m["l1"], iou=m["iou"],
                   passes=m["passes"], linf=m["linf"], changed=m["changed"], l2=m["l2"],
                   per_interpreter=None if parts is None else {
                       n: Distance(d["l1"], d["iou"], d.get("shape")) for n, d in parts.items()},
                   adv=arrays["adv"], map=arrays["map"], benign=arrays["benign"],
                   target_map=arrays["target_map"], support=arrays.get("support"),
                   queries=m.get("queries"), seeds=seeds, clean_pred=m.get("clean_pred"))
