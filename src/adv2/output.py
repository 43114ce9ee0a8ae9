"""The output directory of an attack run (``adv2 attack``).

    OUT/config.json       every setting, the seed and library versions
    OUT/results.csv       one row per image: file,label,clean_pred,target,pred,confidence,
                          success,l1,iou,changed,l2,queries (black-box attacks; else empty),
                          then iou_<name>,l1_<name> for each interpreter the run's holds
                          (one; each member of a joint one, ``cam+grad``)
    OUT/summary.json      aggregates (``per_interpreter``: each one's iou_mean and l1_mean),
                          errors, ignored files, warnings (:meth:`RunWriter.finish`)
    OUT/samples/<name>/   clean.png adv.png benign_map.npy adv_map.npy target_map.npy figure.png
                          (and support.npy with a support)
    OUT/records/<name>.npz  one finished image (:mod:`adv2.records`), bound to its picture
    OUT/adv2.lock         while a run writes: its pid and host (:mod:`adv2.lock`)

Each unit's sample folders, then its records, are written as it finishes, and results.csv is
rewritten from the records (atomically), so a killed run keeps everything it had computed and
a rerun with the same settings resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from adv2.errors import SettingError
from adv2.figures import class_name, figure
from adv2.lock import FolderLock
from adv2.provenance import versions
from adv2.outcome import Distance, Outcome
from adv2.records import Failed, Store, changed_keys, to_json, write_bytes, write_json

FIELDS = ["file", "label", "clean_pred", "target", "pred", "confidence", "success", "l1", "iou",
          "changed", "l2", "queries"]


#: what a rerun may change without being refused: library versions, and the built attack's
#: description (derived from the compared settings)
UNCOMPARED = ("versions", "attack_config")


class RunWriter:
    """The output folder of one ``adv2 attack`` run (see the module docstring), held by its
    :class:`~adv2.lock.FolderLock` from construction to the end of its ``with`` block.

    Arguments:
        out: the folder (created; an existing file is refused).
        config: every setting; a folder made with other settings is refused, naming the
            changed keys, unless ``overwrite`` (which deletes its records, samples and tables).

    Raises:
        FolderBusy: another running process holds the folder.

    Examples:
        >>> with RunWriter("out", settings) as writer:
        ...     writer.finish(seconds, ks, accuracy)
    """

    def __init__(self, out: str | Path, config: dict, overwrite: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise SettingError("out", f"{self.out} is a file, not a folder")
        self.config = json.loads(to_json({**config, "versions": versions()}))
        self.lock = FolderLock(self.out).acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self.lock.release()
            raise
        self.errors: list[dict] = []
        self.ignored: list[dict] = []
        self.warnings: list[dict] = []
        self.names: list[str] = []
        #: the interpreters the run's maps hold: its own, or a joint one's members
        self.parts = str(self.config.get("interpreter", "")).split("+")

    def _open(self, overwrite: bool) -> None:
        """Start afresh (``overwrite``) or check that the folder holds this config's results;
        then clear what killed writers left and write config.json."""
        path = self.out / "config.json"
        if overwrite:
            for name in ("records", "samples"):
                shutil.rmtree(self.out / name, ignore_errors=True)
            for name in ("results.csv", "summary.json", "config.json"):
                (self.out / name).unlink(missing_ok=True)
        elif path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise SettingError("out", f"{path} cannot be read ({exc}); use --overwrite to "
                                          "start afresh") from None
            changed = changed_keys(old, self.config, UNCOMPARED)
            if changed:
                raise SettingError("out", f"{self.out} holds results of other settings "
                                          f"(changed: {', '.join(changed)}); rerun with those "
                                          "settings to resume, choose another --out, or add "
                                          "--overwrite to start afresh")
        self.store = Store(self.out, "records")
        self.store.remove_temporaries()
        write_json(path, self.config)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release the folder (an interrupt becomes one naming it, see :class:`FolderLock`)."""
        self.lock.__exit__(kind, exc, tb)

    def error(self, file: str, message: str) -> None:
        self.errors.append({"file": file, "error": message})

    def ignore(self, file: str, reason: str) -> None:
        self.ignored.append({"file": file, "reason": reason})

    def warn(self, file: str, message: str) -> None:
        self.warnings.append({"file": file, "warning": message})

    def expect(self, names: list[str]) -> None:
        """The attacked images, in the order of results.csv."""
        self.names = list(names)

    def save_samples(self, names: list[str], clean: np.ndarray,
                     outcomes: list[Outcome | Failed], attack: str) -> None:
        """Write the sample folder of each finished image of a unit (before its record)."""
        for name, image, outcome in zip(names, clean, outcomes):
            if isinstance(outcome, Failed):
                continue
            folder = self.out / "samples" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / "clean.png")
            Image.fromarray(outcome.adv).save(folder / "adv.png")
            maps = self._panels(outcome, attack)
            if outcome.support is not None:
                maps["support"] = outcome.support
                np.save(folder / "support.npy", outcome.support)
            np.save(folder / "benign_map.npy", outcome.benign)
            np.save(folder / "adv_map.npy", outcome.map)
            np.save(folder / "target_map.npy", outcome.target_map)
            row = self._row(name, outcome)
            title = (f"{name}: {class_name(row['label'])} → target {class_name(row['target'])}; "
                     f"pred {class_name(row['pred'])} ({row['confidence']:.2f}), "
                     f"L1 {row['l1']:.3f}, IoU {row['iou']:.3f}")
            figure(folder / "figure.png", image, outcome.adv, maps, title)

    def fields(self) -> list[str]:
        """The columns of results.csv: :data:`FIELDS`, then ``iou_<name>`` and ``l1_<name>``
        of each interpreter the maps hold."""
        return FIELDS + [f"{m}_{n}" for n in self.parts for m in ("iou", "l1")]

    def _panels(self, outcome: Outcome, attack: str) -> dict[str, np.ndarray]:
        """The figure's maps: benign, adversarial and target map, for each member of a joint
        interpreter (its part of the concatenated maps, at its own h×w)."""
        titles = {"benign map": outcome.benign, f"{attack} map": outcome.map,
                  "target map": outcome.target_map}
        if len(self.parts) == 1:
            return titles
        shapes = [outcome.per_interpreter[n].shape for n in self.parts]
        ends = np.cumsum([h * w for h, w in shapes])[:-1]
        panels = {}
        for name, (h, w), *pieces in zip(self.parts, shapes,
                                         *(np.split(m.ravel(), ends) for m in titles.values())):
            panels |= {f"{title} ({name})": piece.reshape(h, w)
                       for title, piece in zip(titles, pieces)}
        return panels

    def _distances(self, outcome: Outcome) -> dict[str, Distance]:
        """An outcome's distances per interpreter (:meth:`Outcome.distances`)."""
        return outcome.distances(self.parts[0])

    def _row(self, name: str, outcome: Outcome) -> dict:
        parts = self._distances(outcome)
        return {"file": name, "label": outcome.label, "clean_pred": outcome.clean_pred,
                "target": outcome.target, "pred": outcome.pred,
                "confidence": round(outcome.confidence, 6), "success": int(outcome.success),
                "l1": round(outcome.l1, 6), "iou": round(outcome.iou_mean, 6),
                "changed": round(outcome.changed, 6), "l2": round(outcome.l2, 6),
                "queries": "" if outcome.queries is None else outcome.queries,
                **{f"iou_{n}": round(parts[n].iou_mean, 6) for n in self.parts},
                **{f"l1_{n}": round(parts[n].l1, 6) for n in self.parts}}

    def _outcomes(self) -> tuple[dict[str, Outcome], list[dict]]:
        """The recorded outcomes in image order, and the recorded errors (file, error)."""
        records = self.store.records("", self.names)
        return ({n: Outcome.from_record(r) for n, r in records.items() if r.error is None},
                [{"file": n, "error": r.error} for n, r in records.items()
                 if r.error is not None])

    def write_results(self, outcomes: dict[str, Outcome] | None = None) -> None:
        """Rewrite results.csv from the records (or their ``outcomes``), in image order
        (atomically)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields(), lineterminator="\n")
        writer.writeheader()
        for name, outcome in (self._outcomes()[0] if outcomes is None else outcomes).items():
            writer.writerow(self._row(name, outcome))
        write_bytes(self.out / "results.csv", buf.getvalue().encode())

    def finish(self, seconds: float, ks: tuple[float, ...], clean_accuracy: float | None) -> dict:
        """Write results.csv and summary.json from the records; return the summary."""
        outcomes, failed = self._outcomes()
        self.write_results(outcomes)
        done = list(outcomes.values())
        errors = self.errors + failed
        n = len(done)

        def mean(values: list[float]) -> float | None:
            return float(np.mean(values)) if n else None

        queries = [o.queries for o in done if o.queries is not None]  # black-box attacks only
        parts = [self._distances(o) for o in done]

        summary = {
            "model": self.config.get("model"),
            "interpreter": self.config.get("interpreter"),
            "attack": self.config.get("attack"),
            "n_images": n,
            "clean_accuracy": clean_accuracy,
            "success_rate": mean([float(o.success) for o in done]),
            "mean_confidence": mean([o.confidence for o in done]),
            "l1_mean": mean([o.l1 for o in done]),
            "iou_mean": mean([o.iou_mean for o in done]),
            "iou_per_k": ({f"{k:g}": float(v) for k, v in
                           zip(ks, np.mean([o.iou for o in done], axis=0))} if n else None),
            "per_interpreter": {n: {
                "iou_mean": mean([p[n].iou_mean for p in parts]),
                "l1_mean": mean([p[n].l1 for p in parts])} for n in self.parts},
            "passes_per_image": mean([o.passes for o in done]),
            "queries_mean": mean(queries) if queries else None,
            "queries_median": float(np.median(queries)) if queries else None,
            "changed_mean": mean([o.changed for o in done]),
            "l2_mean": mean([o.l2 for o in done]),
            "eps": self.config.get("eps"),
            "seed": self.config.get("seed"),
            "seconds": round(seconds, 2),
            "errors": errors,
            "ignored": self.ignored,
            "warnings": self.warnings,
        }
        write_json(self.out / "summary.json", summary)
        return summary
