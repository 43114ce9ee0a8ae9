"""The run directory's per-image records, written atomically so that a killed run can resume.

    RUN/experiment.json                         the validated config, its digest, versions
    RUN/images.json                             the image list: name, path, label, pred, target
    RUN/results/<stage>/<image>.npz             one finished unit: arrays + a JSON ``meta`` entry
    RUN/results/<stage>/<image>.error.json      one failed unit: its error message
    RUN/report/                                 tables, figures, report.md, index.html

A stage is a path such as ``cam/adv2``, ``transfer/cam-to-grad`` or ``detection/benign``. Every
file is written to a hidden temporary name, flushed to disk and renamed over its final name
(``os.replace``), so a reader sees either nothing or the whole file. A record that cannot be
read back (a damaged disk, a hand-truncated file) counts as missing and is recomputed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

log = logging.getLogger(__name__)

TMP_GLOB = ".*.tmp"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def write_json(path: Path, data: object) -> None:
    write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


@dataclass
class Record:
    """One unit's outcome: ``meta`` (JSON values) and ``arrays``, or ``error`` (a message)."""

    name: str
    meta: dict
    arrays: dict[str, np.ndarray]
    error: str | None = None


class Store:
    """Per-image records under ``root/results``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.results = self.root / "results"

    def _npz(self, stage: str, name: str) -> Path:
        return self.results / stage / f"{name}.npz"

    def _err(self, stage: str, name: str) -> Path:
        return self.results / stage / f"{name}.error.json"

    def save(self, stage: str, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Record a finished unit."""
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        write_bytes(self._npz(stage, name), buf.getvalue())

    def save_error(self, stage: str, name: str, message: str, meta: dict | None = None) -> None:
        """Record a failed unit; the run goes on, and a resumed run does not retry it (delete
        the ``.error.json`` file to retry)."""
        write_json(self._err(stage, name), {"error": message, **(meta or {})})

    def load(self, stage: str, name: str) -> Record | None:
        """The unit's record, or None when it is missing or unreadable."""
        err = self._err(stage, name)
        if err.is_file():
            try:
                data = json.loads(err.read_text())
                return Record(name, data, {}, str(data["error"]))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unreadable record %s (%s)", err, exc)
        path = self._npz(stage, name)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable record %s (%s); it will be recomputed", path, exc)
            return None
        return Record(name, meta, arrays)

    def done(self, stage: str, name: str) -> bool:
        return self.load(stage, name) is not None

    def records(self, stage: str, names: list[str]) -> dict[str, Record]:
        """The readable records of ``names`` in ``stage`` (missing ones left out)."""
        out = {}
        for name in names:
            record = self.load(stage, name)
            if record is not None:
                out[name] = record
        return out

    def remove_temporaries(self) -> int:
        """Delete temporary files (and report folders) left by killed writers; returns how
        many."""
        stale = list(self.root.rglob(TMP_GLOB)) if self.root.is_dir() else []
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(stale)
