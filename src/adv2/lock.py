"""One run at a time in an output folder: ``FOLDER/adv2.lock``.

The lock file holds the holder's pid, host and start time (JSON) and, where the file system
supports it, an exclusive ``flock`` on the file for as long as the run lasts. A second process
finding the folder held refuses with :class:`FolderBusy` naming the holder. The folder is held
when the file's ``flock`` is taken, or when the file names another live process on this host;
a lock file left by a process that has ended (killed, say) is stale: it is taken over with a
warning. The lock is released (its file deleted) when the run ends, also on an error or an
interrupt, which :class:`FolderLock` turns into an :class:`~adv2.interrupts.Interrupted`
naming the folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from adv2.interrupts import Interrupted

log = logging.getLogger(__name__)

NAME = "adv2.lock"


class FolderBusy(RuntimeError):
    """The output folder is held by another running process."""


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict:
    """The holder a lock file names (empty when it names none: a file being written)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _named(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')} "
            f"(since {holder.get('started')})")


def _flock(fd: int) -> bool:
    """Take the file's exclusive ``flock`` without waiting: False when another process holds
    it; True when taken, or when the file system has no such locks (then the pid decides)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        log.debug("no flock on this file system (%s): the lock relies on the pid", exc)
    return True


class FolderLock:
    """Hold ``folder`` (created) for one run: a context manager.

    Arguments:
        folder: the output folder.

    Raises:
        FolderBusy: on entering (or :meth:`acquire`), when another live process holds the
            folder.

    Examples:
        >>> with FolderLock("out"):
        ...     write_results()
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock (what entering does); returns the lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            taken = _flock(fd)
            if taken and not self._current(fd):  # released (deleted) meanwhile: open anew
                os.close(fd)
                continue
            holder = _holder(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
            if not taken or self._names_another_live(holder):
                os.close(fd)
                raise self._busy(holder)
            if holder:
                log.warning("%s: taking over the lock of %s, which has ended", self.folder,
                            _named(holder))
            self.fd = fd
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode(), 0)
        os.fsync(self.fd)
        return self

    @staticmethod
    def _names_another_live(holder: dict) -> bool:
        """Whether the lock file names another live process on this host (one that holds it
        where the file system has no ``flock``, or wrote it by hand)."""
        pid = holder.get("pid")
        return (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                and pid != os.getpid() and alive(pid))

    def _current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path`."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _busy(self, holder: dict) -> FolderBusy:
        return FolderBusy(f"{self.folder} is in use by {_named(holder)}: wait for it to end, "
                          f"or delete {self.path} if no run uses this folder")

    def release(self) -> None:
        """Delete the lock file and let go of it (nothing when not held)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            raise Interrupted(exc, self.folder) from None
