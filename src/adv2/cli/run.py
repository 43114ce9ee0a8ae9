"""``adv2 run``: the whole evaluation from one experiment file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import textwrap
from dataclasses import MISSING
from pathlib import Path

from adv2.attack_config import AttackConfig
from adv2.attacks import ATTACKS
from adv2.attacks.settings import ATTACK_KEYS
from adv2.cli.helptext import shown, with_default
from adv2.cli.options import command_parser
from adv2.experiment import ConfigError, ExperimentConfig, load_config, run_experiment
from adv2.experiment.config_keys import config_keys
from adv2.models import ModelError

log = logging.getLogger("adv2")


def _experiment_keys() -> str:
    """The experiment file's keys and their defaults, from :class:`ExperimentConfig`'s fields
    (:func:`~adv2.experiment.config_keys.config_keys`), then what an attack's settings are and why
    ``batch_size`` differs from ``adv2 attack``'s: the epilog of ``adv2 run -h``."""
    rows = [(key, "required" if default is MISSING else shown(default))
            for key, default in config_keys()]
    width = max(len(key) for key, _ in rows) + 2
    attacks = "|".join(ATTACKS)
    notes = [
        f"attacks.<{attacks}> and attacks.<{attacks}>.<interpreter> take {', '.join(ATTACK_KEYS)}; "
        "unset ones take the interpreter's defaults, which 'adv2 attack -h' lists.",
        f"batch_size: {ExperimentConfig.batch_size} (adv2 attack's --batch-size: "
        f"{AttackConfig.batch_size}). A unit of work is batch_size consecutive images: "
        "its records are written when the whole unit is done, torchrun's processes take the "
        "units in turn, and a unit that raises records an error for each of its images. With "
        "one image per unit a killed run redoes at most one image per process, the processes "
        "share the images evenly and a failure costs only its own image; a larger unit is "
        "attacked as one batch, as adv2 attack does.",
    ]
    return "\n".join(["experiment file keys and defaults (docs/experiment.md says what each "
                      "means):", *(f"  {key:<{width}}{value}" for key, value in rows), "",
                      *(textwrap.fill(note) + "\n" for note in notes)])


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``adv2 run``'s parser, whose epilog lists the experiment file's keys."""
    p = command_parser(sub, "run", "the whole evaluation (every interpreter, PGD vs ADV², "
                                   "transfer, detection, report) from one experiment file",
                       epilog=_experiment_keys(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.fill(
                           "The whole evaluation (every interpreter, PGD vs ADV², transfer, "
                           "detection, report) from one experiment file (YAML); rerunning the "
                           "same command resumes an interrupted run."))
    p.add_argument("config", help="experiment YAML file, its keys below (see configs/ and "
                                  "docs/experiment.md; required)")
    p.add_argument("--out", help=with_default(
        "run directory; the same command resumes an interrupted run",
        "runs/<config name>, in the working directory"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=with_default(
        "override a key (the value read as YAML), e.g. --set limit=4 --set "
        "attacks.adv2.steps=20 (repeatable)", "none"))
    p.add_argument("--no-progress", action="store_true",
                   help=with_default("no progress bars", False))


def execute(args: argparse.Namespace) -> int:
    """Run ``adv2 run``; rank 0 prints the attacks' summary and where the report is. Returns
    the exit code."""
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config, args.set)
        out = args.out or str(Path("runs") / Path(args.config).stem)
        summary = run_experiment(cfg, out, progress=not args.no_progress)
    except (ConfigError, ModelError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if not summary:  # a rank other than 0
        return 0
    print(json.dumps(summary["attacks"], indent=2))
    print(f"report: {Path(summary['report']).resolve()}")
    return 0 if summary["images"] else 1
