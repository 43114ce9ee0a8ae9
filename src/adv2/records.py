"""Per-image records and the one atomic file writer, so that a killed run can resume.

    ROOT/<folder>/<stage>/<image>.npz           one finished image: arrays + a JSON ``meta``
    ROOT/<folder>/<stage>/<image>.error.json    one failed image: its error message

``adv2 run`` keeps them under ``RUN/results/<stage>/`` (a stage is a path such as ``cam/adv2``,
``transfer/cam-to-grad`` or ``detection/benign``; a ``:`` of an interpreter's spec such as
``captum:Saliency`` is ``-`` in the folder's name), ``adv2 attack`` under ``OUT/records/``. Every
file is written to a hidden temporary name, flushed to disk and renamed over its final name
(``os.replace``), so a reader sees either nothing or the whole file. A record carries the digest
of the image it was computed from (``meta["input"]``); a record that cannot be read back (a
damaged disk, a hand-truncated file) or whose image has changed counts as missing and is
recomputed. Every JSON file is strict JSON: a NaN or an infinity is an error, never written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from adv2.interrupts import Interrupted

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


def to_json(data: object) -> str:
    """Strict JSON text (``allow_nan=False``: a non-finite number raises ValueError)."""
    return json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"


def write_json(path: Path, data: object) -> None:
    """Write strict JSON atomically."""
    write_bytes(path, to_json(data).encode())


def changed_keys(old: dict, new: dict, ignore: tuple[str, ...] = (), prefix: str = ""
                 ) -> list[str]:
    """The dotted keys whose values differ between two nested settings mappings."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, ignore, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def input_digest(picture: str, label: int, target: int) -> str:
    """What an image's records are bound to: its picture's digest
    (:func:`adv2.data.image_digest`), its label and its target class, so that a labels file
    edited in place or a target drawn anew makes the old record stale rather than reused.

    Examples:
        >>> input_digest("ab12", 3, 7) == input_digest("ab12", 3, 7) != input_digest("ab12", 4, 7)
        True
    """
    return hashlib.sha256(f"{picture}:{label}:{target}".encode()).hexdigest()


def downstream_digests(store: Store, digests: Mapping[str, str],
                       sources: Sequence[str]) -> dict[str, str]:
    """What the records of a stage that reads the stages ``sources`` are bound to: each
    image's input digest and its source records as they lie on disk
    (:meth:`Store.fingerprint`), so that a source record made anew (an error record deleted
    and the image attacked again) makes the later record stale rather than reused.

    Examples:
        >>> bound = downstream_digests(store, data.digests, ["cam/adv2"])  # doctest: +SKIP
    """
    return {name: hashlib.sha256(":".join([digest, *(store.fingerprint(s, name)
                                                      for s in sources)]).encode()).hexdigest()
            for name, digest in digests.items()}


@dataclass
class Record:
    """One unit's outcome: ``meta`` (JSON values) and ``arrays``, or ``error`` (a message)."""

    name: str
    meta: dict
    arrays: dict[str, np.ndarray]
    error: str | None = None


class Store:
    """Per-image records under ``root/folder``."""

    def __init__(self, root: str | Path, folder: str = "results") -> None:
        self.root = Path(root)
        self.results = self.root / folder

    def _folder(self, stage: str) -> Path:
        """A stage's folder; ``:`` (not file-name safe everywhere) becomes ``-``."""
        return self.results / stage.replace(":", "-")

    def _npz(self, stage: str, name: str) -> Path:
        return self._folder(stage) / f"{name}.npz"

    def _err(self, stage: str, name: str) -> Path:
        return self._folder(stage) / f"{name}.error.json"

    def save(self, stage: str, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Record a finished image (replacing an error record of it)."""
        buf = io.BytesIO()
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
        np.savez_compressed(buf, meta=np.array(text), **arrays)
        self._err(stage, name).unlink(missing_ok=True)  # first: a kill between leaves neither
        write_bytes(self._npz(stage, name), buf.getvalue())

    def save_error(self, stage: str, name: str, message: str, meta: dict | None = None) -> None:
        """Record a failed image; the run goes on, and a resumed run does not retry it (delete
        the ``.error.json`` file to retry)."""
        write_json(self._err(stage, name), {"error": message, **(meta or {})})
        self._npz(stage, name).unlink(missing_ok=True)

    def load(self, stage: str, name: str, digest: str | None = None) -> Record | None:
        """The image's record, or None when it is missing, unreadable, or (with ``digest``)
        made from another picture."""
        record = self._read(stage, name)
        if record is not None and digest is not None and record.meta.get("input") != digest:
            log.info("%s: the record of %s was made from another picture; recomputing", stage,
                     name)
            return None
        return record

    def _read(self, stage: str, name: str) -> Record | None:
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

    def fingerprint(self, stage: str, name: str) -> str:
        """A digest of the image's record in ``stage`` as it lies on disk (its error record
        first, as :meth:`load` reads them; "" when there is none)."""
        for path in (self._err(stage, name), self._npz(stage, name)):
            if path.is_file():
                return hashlib.sha256(path.read_bytes()).hexdigest()
        return ""

    def done(self, stage: str, name: str, digest: str | None = None) -> bool:
        return self.load(stage, name, digest) is not None

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


# --------------------------------------------------------------------------------------------
# Units of work
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Failed:
    """The outcome of one image that could not be computed (e.g. non-finite outputs)."""

    error: str


class Recordable(Protocol):
    """What a unit of work produces per finished image: its record's arrays and JSON meta
    (:class:`~adv2.outcome.Outcome`, :class:`Entry`)."""

    def to_record(self) -> tuple[dict[str, np.ndarray], dict]: ...


@dataclass(frozen=True)
class Entry:
    """A finished image as a stage records it: ``arrays`` and JSON ``meta`` (the transfer and
    detection stages' outcomes)."""

    arrays: dict[str, np.ndarray]
    meta: dict

    def to_record(self) -> tuple[dict[str, np.ndarray], dict]:
        return self.arrays, self.meta


#: one unit of work produces, per image, a :class:`Recordable` or :class:`Failed`
Output = Recordable | Failed


class Shards(Protocol):
    """Which units this process runs (``adv2.experiment.distributed.Context``)."""

    main: bool

    def shard(self, units: Sequence[T]) -> list[T]: ...


class Alone:
    """One process: every unit is its own."""

    main = True

    def shard(self, units: Sequence[T]) -> list[T]:
        return list(units)


def chunks(names: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of ``size`` names: the units of work, independent of the number of
    processes."""
    return [names[i:i + size] for i in range(0, len(names), size)]


def run_units(ctx: Shards, store: Store, stage: str, units: list[list[str]],
              work: Callable[[list[str]], list[Output]], progress: bool,
              digests: Mapping[str, str], after: Callable[[], None] | None = None) -> None:
    """Run this process's share of ``units`` not yet recorded in ``stage`` for the same
    pictures (``digests``: name → :func:`adv2.data.image_digest` of its input). An image whose
    outcome is :class:`Failed`, or every image of a unit that raises, is recorded as an error
    and the stage goes on; ``after`` runs once each unit is recorded. The bar shows the images
    done and, for a black-box attack, the queries they spent. Ctrl-C (or SIGTERM, see
    :mod:`adv2.interrupts`) raises :class:`~adv2.interrupts.Interrupted` counting the images
    recorded."""
    mine = ctx.shard(units)
    todo = [u for u in mine if not all(store.done(stage, n, digests[n]) for n in u)]
    total = sum(len(u) for u in mine)
    done = total - sum(len(u) for u in todo)
    bar = tqdm(total=total, initial=done, desc=stage, unit="img",
               disable=not (progress and ctx.main), dynamic_ncols=True)
    queries = 0  # a black-box attack's, shown on the bar
    try:
        for unit in todo:
            try:
                outputs = work(unit)
            except Exception as exc:
                log.exception("%sfailed on %s", f"{stage}: " if stage else "", ", ".join(unit))
                outputs = [Failed(f"{type(exc).__name__}: {exc}")] * len(unit)
            for name, output in zip(unit, outputs):
                if isinstance(output, Failed):
                    log.error("%s: %s: %s", stage, name, output.error)
                    store.save_error(stage, name, output.error, {"input": digests[name]})
                else:
                    arrays, meta = output.to_record()
                    store.save(stage, name, arrays, {**meta, "input": digests[name]})
                    queries += meta.get("queries", 0)
            if after is not None:
                after()
            done += len(unit)
            if queries:
                bar.set_postfix_str(f"{queries} queries", refresh=False)
            bar.update(len(unit))
    except KeyboardInterrupt as exc:  # counted on disk: it may come between two saves
        done = sum(store.done(stage, n, digests[n]) for u in mine for n in u)
        raise Interrupted(exc, store.root, stage, done, total,
                          sum(len(u) for u in units)) from None
    finally:
        bar.close()
