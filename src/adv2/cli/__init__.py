"""The ``adv2`` command line: ``adv2 attack``, ``adv2 detect fit|score``, ``adv2 run``,
``adv2 train-rts`` and ``adv2 demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from adv2 import interrupts
from adv2.cli import attack, demo, detect, run, train_rts
from adv2.cli.helptext import fraction, shown, with_default
from adv2.lock import FolderBusy

__all__ = ["build_parser", "fraction", "main", "shown"]

log = logging.getLogger("adv2")

#: each command's module: its ``add_parser(sub)`` and ``execute(args)``, in the order of ``-h``
COMMANDS = {"attack": attack, "detect": detect, "run": run, "train-rts": train_rts,
            "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (the CLI pages of the docs are generated from it)."""
    parser = argparse.ArgumentParser(prog="adv2", description=__doc__.replace("``", "'"))
    parser.add_argument("-v", "--verbose", action="store_true", help=with_default(
        "debug logging; also accepted after the command", False))
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an output folder another process holds is an error naming it (exit
    2), and Ctrl-C or SIGTERM ends with one line saying what is done (exit 130 or 143; under
    torchrun, rank 0 speaks)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with interrupts.sigterm_raises():
            return COMMANDS[args.command].execute(args)
    except FolderBusy as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(interrupts.describe(exc), file=sys.stderr)
        return interrupts.exit_code(exc)
