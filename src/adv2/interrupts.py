"""Ctrl-C and SIGTERM end a run the same way: records kept, one line saying where it stopped.

While :func:`sigterm_raises` is active, SIGTERM raises :class:`Terminated`, a
``KeyboardInterrupt``, so both signals take the path of Ctrl-C (never a unit's error record:
:func:`adv2.records.run_units` records ``Exception`` only). The loop that was running turns the
interrupt into :class:`Interrupted`, which says how many images are done and where.

Examples:
    >>> with sigterm_raises():
    ...     try:
    ...         run()
    ...     except KeyboardInterrupt as exc:
    ...         print(describe(exc)); code = exit_code(exc)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread was."""

    signum = signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """An interrupted run of ``folder``: ``done`` of ``total`` images of ``stage`` recorded
    (``None`` where no loop was counting), of ``whole`` images when the process had a share of
    them (``torchrun``).

    Arguments:
        cause: the interrupt (Ctrl-C's ``KeyboardInterrupt`` or :class:`Terminated`).
        folder: the output folder whose records are kept.
    """

    def __init__(self, cause: KeyboardInterrupt, folder: Path, stage: str = "",
                 done: int | None = None, total: int | None = None,
                 whole: int | None = None) -> None:
        self.signum = signum(cause)
        where = f" in {stage}" if stage else ""
        if done is None:
            text = f"interrupted{where}: the records so far are kept in {folder}"
        else:
            share = f" of this process's share ({whole} in all)" if whole != total else ""
            text = f"interrupted{where}: {done} of {total} images{share} done in {folder}"
        super().__init__(f"{text}; the same command resumes")


def signum(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM for :class:`Terminated`, else SIGINT."""
    return getattr(exc, "signum", signal.SIGINT)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit status of a process ended by the interrupt's signal: 130 (SIGINT) or
    143 (SIGTERM)."""
    return 128 + signum(exc)


def describe(exc: KeyboardInterrupt) -> str:
    """The interrupt's one line (:class:`Interrupted`'s, else a plain one)."""
    if isinstance(exc, Interrupted):
        return str(exc)
    return "interrupted; the same command resumes"


def _raise(number: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (call it from the main thread); the
    previous handler is restored after it."""
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
