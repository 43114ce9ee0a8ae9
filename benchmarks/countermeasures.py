"""Countermeasures judged by adaptive attacks: feature squeezing and the ensemble of interpreters
against PGD, ADV² against each interpreter, ADV² against all of them at once and adaptive ADV².

The first ``--attacked`` correctly classified images of a seeded permutation of
../shared/data/imagenet-sample (those of the attack benchmarks with the same seed, skipping any
image an interpreter was trained on) are attacked; the next ``--benign`` correctly classified
ones calibrate every detector (``--detectors``, built by the detector registry with their
default settings) at ``--fpr`` false positives, with the held-out rate by ``--folds``-fold
cross-validation. Attacks: the embedded EfficientNet-Lite0, ε = 8/255, the per-image seeded
targets of ``adv2 attack``, benign target maps, the CLI's attack defaults
(``adv2.pipeline.build_attack``). Rows: PGD; ADV² against each interpreter of
``--interpreters``; ADV² against their joint (``cam+grad``) and each ``--joint`` spelling;
adaptive ADV² on the joint against each detector and against all of them at once. Prints the
Markdown page (and writes it with --out):

    python benchmarks/countermeasures.py --out docs/benchmarks/countermeasures.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from adv2 import pipeline, target_maps
from adv2.attacks.result import judge
from adv2.benchmarking import (add_page_options, image_targets, images_missing, pick_images,
                               publish, run_batches, stacked)
from adv2.data import Sample
from adv2.detection import DETECTORS, Detector, auroc, build_detector, wilson_interval
from adv2.experiment.tables import Table
from adv2.interpreters import Interpreter, build_interpreter
from adv2.key_value import parse_setting
from adv2.models import Classifier, describe_device, load_model
from adv2.provenance import versions
from adv2.target_classes import interpreter_seeds

EXPLANATION = (
    "Each detector scores the final uint8 image; it flags an image whose joint score (the "
    "maximum over its score columns) is above the threshold fitted on the benign images at the "
    "false-positive rate. Feature squeezing (`squeeze`) scores ‖softmax f(x) − softmax "
    "f(ψ(x))‖₁ for each of its squeezers ψ; the ensemble of interpreters (`ensemble`) scores "
    "the inconsistency of its interpreters' maps of the predicted class (1 − their top-k% IoU). "
    "Detected: the attacked images flagged, with the Wilson 95% interval of that rate; AUROC: "
    "the area under the ROC curve of the joint scores of the attacked images against those of "
    "the benign images (the probability that an attacked image scores above a benign one, ties "
    "half): 0.5 when the detector cannot tell them apart. Success is the target class predicted "
    "on the final uint8 image (for the adaptive rows `adv2 attack` reports success only when "
    "the guarded detectors do not flag the image either; here that is the detection columns). "
    "IoU (mean of the top-k% IoU over k = 10 … 50%) and L1 are each interpreter's true map of "
    "the target class on the final uint8 image against its benign map, for every interpreter "
    "whatever the attack targeted. ADV² against a joint (`cam+grad`) is one attack on the sum "
    "of its members' map losses, each normalised by its value at the start; adaptive ADV² adds "
    "each guarded detector's differentiable penalty and keeps only iterates that no guarded "
    "detector flags. Each row is `adv2 attack` on the attacked images with the same seed: "
    "`--attack pgd`, `--interpreter <name>` or `--adaptive <detector files>`, the files those "
    "of `adv2 detect fit --detector <name>` on the benign images.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benign", type=int, default=100,
                        help="correctly classified benign images that calibrate the detectors")
    parser.add_argument("--attacked", type=int, default=20, help="images attacked by each row")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=10,
                        help="cross-validation folds for the held-out false-positive rate")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS),
                        help="registered detectors, at their default settings")
    parser.add_argument("--interpreters", nargs="+", default=["cam", "grad"],
                        help="two or more interpreters: ADV² against each, and their joint")
    parser.add_argument("--joint", nargs="*", default=[],
                        help="more joint interpreters attacked at once (e.g. cam+grad+rts)")
    parser.add_argument("--attack-setting", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings", help="an attack setting for every row (e.g. steps=50)")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_page_options(parser, __file__)
    return parser


class Calibrated(NamedTuple):
    """A fitted detector, the joint scores of the benign images it was fitted on, their
    held-out flags (cross-validation) and its seconds per input."""

    detector: Detector
    benign: torch.Tensor
    held_out: torch.Tensor
    seconds: float


class Row(NamedTuple):
    """One attack row: its label and the settings of ``adv2 attack`` it runs."""

    label: str
    interpreter: str
    attack: str = "adv2"
    adaptive: tuple[str, ...] = ()


def finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values``, or a ValueError naming ``what`` when any is not finite."""
    if not torch.isfinite(values).all():
        raise ValueError(f"{what}: values that are not finite (NaN or infinity)")
    return values


def calibrate(args: argparse.Namespace, model: Classifier, benign: list[Sample]
              ) -> dict[str, Calibrated]:
    """Every detector of ``--detectors`` fitted on the benign images at ``--fpr``, by name."""
    images = np.stack([s.image for s in benign])
    fitted = {}
    for name in args.detectors:
        detector = build_detector(name, model, batch_size=args.batch_size)
        scores = finite(detector.scores(images), f"the {name} detector's benign scores")
        held_out = detector.fit_held_out(scores, args.fpr, args.folds, args.seed).held_out
        fitted[name] = Calibrated(detector, scores.amax(dim=1), held_out[:, -1],
                                  detector.seconds_per_input)
    return fitted


def plan(args: argparse.Namespace) -> list[Row]:
    """The rows: PGD, ADV² against each interpreter, against the joints, and adaptive ADV² on
    the joint of ``--interpreters`` against each detector and all of them."""
    joint = "+".join(args.interpreters)
    rows = [Row("PGD", joint, "pgd"), *(Row(f"ADV² ({name})", name) for name in args.interpreters),
            *(Row(f"ADV² ({spelling})", spelling) for spelling in [joint, *args.joint])]
    guarded = [[name] for name in args.detectors]
    if len(args.detectors) > 1:
        guarded.append(list(args.detectors))
    rows += [Row(f"adaptive ADV² ({joint}) vs {' + '.join(names)}", joint, "adv2", tuple(names))
             for names in guarded]
    return rows


def judged(interpreters: dict[str, Interpreter], model: Classifier, samples: list[Sample],
           adv: np.ndarray, targets: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Each interpreter's IoU (N,, the mean over k) and L1 (N,) of its true maps of the targets
    on the uint8 images ``adv`` against the benign maps (keys ``iou <name>``, ``l1 <name>``),
    and the success (the target predicted), under the judge's per-image seeds as
    ``adv2 attack`` judges a stochastic interpreter."""
    x, labels = stacked(model, samples)
    seeds = interpreter_seeds(seed, [s.key for s in samples], judge=True)
    out = {}
    for name, interpreter in interpreters.items():
        interpreter.use_seeds(seeds)
        benign = target_maps.benign(interpreter, x, labels)
        result = judge(adv, x, targets, model, torch.zeros(len(x), device=x.device),
                       interpreter, benign)
        out[f"iou {name}"] = finite(result.iou.mean(dim=1).cpu(), f"{name}'s IoU")
        out[f"l1 {name}"] = finite(result.l1.cpu(), f"{name}'s L1")
    return {"success": result.success.cpu(), **out}


def rate(flags: torch.Tensor) -> str:
    """Flags set as a percentage, their count and the Wilson 95% interval."""
    k, n = int(flags.sum()), len(flags)
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.0f}% ({k}/{n}) [{100 * low:.0f}, {100 * high:.0f}]"


def described(settings: dict) -> str:
    """A detector's settings as text (``interpreters: cam, grad; ks: 0.1, …``)."""
    return "; ".join(f"{key}: " + (", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                             for v in value)
                                   if isinstance(value, (list, tuple)) else str(value))
                     for key, value in settings.items())


def tables(args: argparse.Namespace, interpreters: list[str]) -> tuple[Table, Table]:
    """The empty attack table and the detector table."""
    columns, formats = ["attack", "n", "success"], ["", "d", ".3f"]
    for name in interpreters:
        columns += [f"IoU {name}", f"L1 {name}"]
        formats += [".3f", ".4f"]
    for name in args.detectors:
        columns += [f"{name} detected [95% CI]", f"{name} AUROC"]
        formats += ["", ".3f"]
    attacks = Table("countermeasures", "detection of each attack", [*columns, "s / image"],
                    [*formats, ".1f"], aligned=False)
    detectors = Table("detectors", "the calibrated detectors",
                      ["detector", "settings", "joint threshold", "held-out FPR [95% CI]",
                       "s / input"], ["", "", ".4f", "", ".3f"], aligned=False)
    return attacks, detectors


def measure(args: argparse.Namespace, model: Classifier, row: Row, samples: list[Sample],
            tgts: torch.Tensor, files: dict[str, Path], fitted: dict[str, Calibrated],
            judges: dict[str, Interpreter]) -> tuple[list, str, float]:
    """One row of the attack table, its per-image values, and the seconds it saved by reading
    outcomes back from ``--work`` (their recorded cost less the time spent attacking here)."""
    settings = dict(map(parse_setting, args.settings))
    cfg = pipeline.AttackConfig(interpreter=row.interpreter, attack=row.attack, seed=args.seed,
                                adaptive=tuple(str(files[n]) for n in row.adaptive) or None,
                                **settings)
    interpreter = build_interpreter(row.interpreter, model)
    attack = pipeline.build_attack(cfg, model, interpreter)
    start = time.time()
    out, seconds = run_batches(cfg, model, interpreter, attack, samples, tgts, args.batch_size,
                               args.work)
    saved = seconds * len(samples) - (time.time() - start)
    assert out["linf"].max() <= round(255 * cfg.eps)
    values = judged(judges, model, samples, out["adv"], tgts, args.seed)
    cells = [row.label, len(samples), values["success"].mean()]
    for name in judges:
        cells += [values[f"iou {name}"].mean(), values[f"l1 {name}"].mean()]
    for name, calibrated in fitted.items():
        found = calibrated.detector.detect(out["adv"])
        values[f"score {name}"] = finite(found.joint.cpu(), f"the {name} detector's scores")
        cells += [rate(found.joint_flag.cpu()),
                  auroc(values[f"score {name}"], calibrated.benign)]
    listed = "; ".join(f"{key} " + " ".join(f"{v:.3g}" for v in values[key].tolist())
                       for key in values)
    return [*cells, seconds], f"- {row.label}: {listed}", saved


def command(args: argparse.Namespace) -> str:
    """The command line that writes the page."""
    return ("python benchmarks/countermeasures.py"
            f" --benign {args.benign} --attacked {args.attacked} --fpr {args.fpr:g}"
            f" --folds {args.folds} --detectors {' '.join(args.detectors)}"
            f" --interpreters {' '.join(args.interpreters)}"
            + (f" --joint {' '.join(args.joint)}" if args.joint else "")
            + "".join(f" --attack-setting {s}" for s in args.settings)
            + f" --seed {args.seed} --batch-size {args.batch_size} --threads {args.threads}"
            + (f" --device {args.device}" if args.device != "cpu" else ""))


def section(title: str, table: Table) -> list[str]:
    """A page section's lines: its heading and its table."""
    return [f"## {title}", "", table.markdown().removesuffix("\n"), ""]


def report(args: argparse.Namespace, minutes: float, attacks: Table, detectors: Table,
           images: list[Sample], tgts: torch.Tensor, notes: list[str]) -> str:
    """The Markdown page: command, versions, machine, date, the tables, per-image values."""
    libraries = ", ".join(f"{k} {v}" for k, v in versions().items()
                          if v != "not installed")
    return "\n".join([
        "# Countermeasures judged by adaptive attacks",
        "",
        f"Command: `{command(args)}`",
        "",
        f"Versions: {libraries}. Machine: {platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), {describe_device(args.device)}. Date: {time.strftime('%Y-%m-%d')}; total "
        f"{minutes:.0f} min. Model: efficientnet_lite0 (embedded), ε = 8/255, seeded random "
        "targets per image (those of `adv2 attack` with the same seed), benign target maps, the "
        "CLI's attack defaults"
        + (f" except {', '.join(args.settings)}" if args.settings else "")
        + f". Images: the first {args.attacked} correctly classified images of a seeded "
        "permutation of `../shared/data/imagenet-sample` are attacked, the next "
        f"{args.benign} calibrate the detectors at {100 * args.fpr:g}% false positives; the "
        f"held-out false-positive rate is measured by {args.folds}-fold cross-validation (each "
        "benign image scored against thresholds fitted on the other folds).",
        "",
        EXPLANATION,
        "",
        *section("Detection of each attack", attacks),
        *section("The detectors", detectors),
        "## Per image",
        "",
        "Images, in order: " + " ".join(s.name for s in images) + ".",
        "",
        "Targets: " + " ".join(str(t) for t in tgts.tolist()) + ".",
        "",
        "Success (1: the target predicted), each interpreter's IoU and L1 and each detector's "
        "joint score, per image:",
        "",
        *notes,
        "",
    ])


def invalid(args: argparse.Namespace) -> str | None:
    """What is wrong with the options (None: nothing)."""
    if len(args.interpreters) < 2:
        return "--interpreters: give two or more (their joint is attacked too)"
    if not 2 <= args.folds <= args.benign:
        return f"--folds {args.folds}: need 2 ≤ folds ≤ --benign ({args.benign})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if invalid(args):
        parser.error(invalid(args))
    if images_missing(args.images, "the countermeasures page"):
        return 1
    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(device=args.device)
    members = [*args.interpreters, *(m for s in args.joint for m in s.split("+"))]
    judges = {name: build_interpreter(name, model) for name in dict.fromkeys(members)}
    trained_on = frozenset().union(*(i.fitted_on for i in judges.values()))
    chosen = pick_images(model, args.images, args.attacked + args.benign, args.seed, trained_on)
    if len(chosen) < args.attacked + args.benign:
        parser.error(f"only {len(chosen)} correctly classified images for --attacked "
                     f"{args.attacked} and --benign {args.benign}")
    samples, benign = chosen[:args.attacked], chosen[args.attacked:]
    tgts = image_targets(model, samples, args.seed)
    fitted = calibrate(args, model, benign)
    attacks, detectors = tables(args, list(judges))
    for name, calibrated in fitted.items():
        detectors.rows.append([name, described(calibrated.detector.settings()),
                               calibrated.detector.joint_threshold, rate(calibrated.held_out),
                               calibrated.seconds])
    notes, saved = [], 0.0  # a resumed run's total counts read-back outcomes at their cost
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) if args.work is None else args.work / "detectors"
        folder.mkdir(parents=True, exist_ok=True)  # a stable place: the rows' settings name it
        files = {name: folder / f"{name}.json" for name in fitted}
        for name, calibrated in fitted.items():
            calibrated.detector.save(files[name])
        for row in plan(args):
            cells, note, more = measure(args, model, row, samples, tgts, files, fitted, judges)
            saved += more
            attacks.rows.append(cells)
            notes.append(note)
            print(attacks.line(cells), flush=True)
    publish(report(args, (time.time() - started + saved) / 60, attacks, detectors, samples, tgts,
                   notes), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
