"""Feature-squeezing detection of PGD, ADV² and adaptive ADV² (the paper's Tables 4 and 5).

A seeded permutation of ../shared/data/imagenet-sample is split into two disjoint parts: the
attack pool (the permutation's last images, among those no interpreter was trained on: RTS's
checkpoint lists its training images) and ``--benign`` images that set the thresholds (5%
false positives) and, by ``--folds``-fold cross-validation, measure the held-out
false-positive rate of that fitting. The first correctly classified images of the pool are
attacked (seeded random targets per image, as ``adv2 attack`` draws them, benign target maps,
the embedded EfficientNet-Lite0, ε = 8/255, the CLI's attack defaults of
``adv2.pipeline.build_attack``).

Attacks: PGD, ADV², A*(s) — adaptive ADV² against one squeezer s (``--specific``; the two-stage
algorithm for bit depth, the hinge + cross entropy for smoothing) — and A*(all), one adaptive
ADV² against every squeezer of the detector at once (NLM through BPDA). Prints Markdown (and
writes it with --out):

    python benchmarks/detection_report.py --interpreters cam:20 \
        --out docs/benchmarks/detection-cam.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

from adv2 import pipeline
from adv2.attacks import AdaptiveADV2, Attack
from adv2.benchmarking import (add_page_options, image_targets, images_missing,
                               interpreter_plan, publish, run_batches)
from adv2.data import Sample, load_dataset
from adv2.detection import SQUEEZER_NAMES, FeatureSqueezingDetector
from adv2.experiment.tables import Table
from adv2.interpreters import INTERPRETERS, Interpreter, build_interpreter
from adv2.models import Classifier, describe_device, load_model
from adv2.preparation import predict

#: Xu et al.'s (NDSS 2018) joint detector for ImageNet
XU_JOINT = ("bit-5", "median-2x2", "nlm-11-3-4")
PAPER_ROWS = ("bit-2", "bit-3", "median-3x3", "nlm-11-3-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interpreters", nargs="+", default=[f"{n}:20" for n in INTERPRETERS],
                        help="interpreter:n_images pairs (default: every interpreter, 20 images)")
    parser.add_argument("--benign", type=int, default=440,
                        help="benign images for the thresholds and the false-positive rate")
    parser.add_argument("--folds", type=int, default=10,
                        help="cross-validation folds for the held-out false-positive rate")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--squeezers", nargs="+", default=list(SQUEEZER_NAMES))
    parser.add_argument("--specific", nargs="*", default=list(PAPER_ROWS),
                        help="squeezers that also get their own adaptive attack A*(s)")
    parser.add_argument("--no-all", action="store_true",
                        help="skip A*(all), the adaptive attack against every squeezer")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--lam-scale", type=float,
                        help="the adaptive attacks' λ multiplier (default: the interpreter's "
                             "adaptive_lam_scale)")
    add_page_options(parser, __file__)
    return parser


def split(n_images: int, n_benign: int, seed: int, fitted: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index arrays (benign, attack pool) of a seeded permutation: the pool is the last
    ``n_images − n_benign`` images of the permutation among those no interpreter was fitted on
    (``fitted``: a boolean mask; none: the permutation's tail), the benign images the rest."""
    order = np.random.default_rng(seed).permutation(n_images)
    n_pool = n_images - n_benign
    if n_pool <= 0:
        raise ValueError(f"{n_benign} benign images leave none of {n_images} to attack")
    free = order if fitted is None else order[~fitted[order]]
    if len(free) < n_pool:
        raise ValueError(f"only {len(free)} images are unseen by the interpreters' training; "
                         f"lower --benign to at most {n_images - len(free)}")
    pool = free[-n_pool:]
    return order[~np.isin(order, pool)], pool


def rate(flags: torch.Tensor) -> str:
    """The fraction of flags set, as a percentage."""
    return f"{100 * flags.float().mean().item():.1f}%"


class Detectors:
    """The detector of every squeezer and Xu et al.'s joint detector (the squeezers of
    :data:`XU_JOINT` it has), fitted on the benign scores: their rows, thresholds, flags and
    held-out benign flags."""

    def __init__(self, model: Classifier, squeezers: list[str], benign: np.ndarray, fpr: float,
                 folds: int, seed: int) -> None:
        self.detector = FeatureSqueezingDetector(model, squeezers)
        scores = self.detector.scores(benign)
        every = self.detector.fit_held_out(scores, fpr, folds, seed)
        self.joint_cols = [self.detector.names.index(n) for n in XU_JOINT
                           if n in self.detector.names]
        self.xu = FeatureSqueezingDetector(model, [self.detector.names[c]
                                                   for c in self.joint_cols])
        xu = self.xu.fit_held_out(scores[:, self.joint_cols], fpr, folds, seed)
        names = self.detector.names
        self.rows = [*names, f"joint: max over all {len(names)}",
                     "joint: " + ", ".join(self.xu.names) + " (Xu et al.)"]
        self.thresholds = [*self.detector.thresholds.tolist(), self.detector.joint_threshold,
                           self.xu.joint_threshold]
        # a column's held-out flags depend on it alone: Xu et al.'s joint is its fit's last
        self.benign_flags = torch.cat([every.held_out, xu.held_out[:, -1:]], dim=1)

    def flags(self, adv: np.ndarray | torch.Tensor) -> torch.Tensor:
        """n×(S+2) flags of images: each squeezer, the joint over all, Xu et al.'s joint."""
        scores = self.detector.scores(adv)
        report = self.detector.decide(scores)
        xu_flag = self.xu.decide(scores[:, self.joint_cols]).joint_flag
        return torch.cat([report.flags, report.joint_flag[:, None], xu_flag[:, None]], dim=1)


def attacks_for(args: argparse.Namespace, model: Classifier, name: str,
                interpreter: Interpreter,
                detector: FeatureSqueezingDetector) -> tuple[dict[str, Attack], AdaptiveADV2]:
    """PGD, ADV², A*(all) unless ``--no-all`` and A*(s) for each ``--specific`` squeezer, by
    row label, and A*(all) (whose settings the report states)."""
    base = {a: pipeline.build_attack(pipeline.AttackConfig(interpreter=name, attack=a,
                                                           seed=args.seed), model, interpreter)
            for a in ("pgd", "adv2")}
    attacks = {"PGD": base["pgd"], "ADV²": base["adv2"],
               "A*(all)": AdaptiveADV2(base["adv2"], detector, lam_scale=args.lam_scale)}
    adaptive = attacks["A*(all)"]
    if args.no_all:
        del attacks["A*(all)"]
    for s in args.specific:
        attacks[f"A*({s})"] = AdaptiveADV2(base["adv2"], detector, [detector.names.index(s)],
                                           lam_scale=args.lam_scale)
    return attacks, adaptive


def tables(args: argparse.Namespace) -> tuple[Table, Table]:
    """The empty Table 4 (detection rates) and Table 5 (the attacks)."""
    adaptive = ["A*(this squeezer)"] * bool(args.specific) + ["A*(all)"] * (not args.no_all)
    columns = ["interpreter", "detector", "threshold", "benign (FPR)", "PGD", "ADV²", *adaptive]
    formats = ["", "", ".3f", *[""] * (len(columns) - 3)]
    table4 = Table("detection", "detection rate", columns, formats, aligned=False)
    table5 = Table("attacks", "attack success and interpretation similarity to the benign map",
                   ["interpreter", "attack", "n", "success", "L1", "IoU",
                    "detected (joint, all)", "s / image"],
                   ["", "", "d", ".3f", ".4f", ".3f", "", ".1f"], aligned=False)
    return table4, table5


def measure(args: argparse.Namespace, model: Classifier, detectors: Detectors,
            interpreter: Interpreter, name: str, n: int, chosen: list[Sample],
            table4: Table, table5: Table) -> tuple[AdaptiveADV2, float]:
    """One interpreter's rows of both tables on the ``chosen`` images, the first ``n``
    correctly classified ones of the pool (Table 5's rows printed as they come); returns
    A*(all) and the seconds this call saved by reading outcomes back from ``--work`` (their
    recorded cost less the time spent here attacking)."""
    tgts = image_targets(model, chosen, args.seed)  # each image's, as adv2 attack's
    cfg = pipeline.AttackConfig(interpreter=name, seed=args.seed)  # benign target maps
    attacks, adaptive = attacks_for(args, model, name, interpreter, detectors.detector)
    flags, saved = {}, 0.0
    for label, attack in attacks.items():
        start = time.time()
        result, seconds = run_batches(cfg, model, interpreter, attack, chosen, tgts,
                                      args.batch_size, args.work)
        saved += seconds * len(chosen) - (time.time() - start)
        assert result["linf"].max() <= round(255 * 8 / 255)
        flags[label] = detectors.flags(result["adv"])
        row = [name, label, n, result["success"].mean(), result["l1"].mean(),
               result["iou"].mean(), f"{100 * flags[label][:, -2].float().mean():.1f}%",
               seconds]
        table5.rows.append(row)
        print(table5.line(row), flush=True)
    benign = detectors.benign_flags
    for i, row in enumerate(detectors.rows):
        own = f"A*({row})"
        cells = [rate(flags[a][:, i]) for a in ("PGD", "ADV²")]
        if args.specific:
            cells.append(rate(flags[own][:, i]) if own in flags else "–")
        if not args.no_all:
            cells.append(rate(flags["A*(all)"][:, i]))
        table4.rows.append([name, row, detectors.thresholds[i],
                            f"{rate(benign[:, i])} ({int(benign[:, i].sum())}/{len(benign)})",
                            *cells])
    return adaptive, saved


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces the report."""
    return (f"python benchmarks/detection_report.py --interpreters {' '.join(args.interpreters)}"
            f" --benign {args.benign} --folds {args.folds} --fpr {args.fpr}"
            f" --seed {args.seed}"
            f" --batch-size {args.batch_size} --threads {args.threads}"
            + (f" --device {args.device}" if args.device != "cpu" else "")
            + (f" --lam-scale {args.lam_scale:g}" if args.lam_scale is not None else "")
            + (f" --squeezers {' '.join(args.squeezers)}"
               if list(args.squeezers) != list(SQUEEZER_NAMES) else "")
            + f" --specific {' '.join(args.specific)}".rstrip()
            + (" --no-all" if args.no_all else ""))


def report(args: argparse.Namespace, minutes: float, n_pool: int, any_fitted: bool,
           adaptive: AdaptiveADV2, table4: Table, table5: Table) -> str:
    """The Markdown page: command, machine, method, Tables 4 and 5."""
    return "\n".join([
        "# Feature-squeezing detection of ADV² (the paper's Tables 4 and 5)",
        "",
        f"Command: `{command(args)}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"{describe_device(args.device)}; torch "
        f"{torch.__version__}; total {minutes:.0f} min. Model: "
        "efficientnet_lite0 (embedded), ε = 8/255, seeded random targets per image (those of "
        "`adv2 attack` with the same seed), benign target maps, "
        "the CLI's attack defaults. Images: a seeded permutation of "
        f"`../shared/data/imagenet-sample`: its last {n_pool} images "
        + ("that no interpreter was trained on " if any_fitted else "")
        + f"form the attack pool, whose first correctly classified images are attacked; the "
        f"other {args.benign} are benign images that fit the thresholds at "
        f"{100 * args.fpr:g}% false positives.",
        "",
        "Score: ‖softmax f(x) − softmax f(ψ(x))‖₁ on the uint8 image (ψ re-quantised to uint8); "
        "a detector flags a score above its threshold; the joint detectors take the maximum over "
        "their squeezers. A*(s): adaptive ADV² against squeezer s alone (bit depth: the paper's "
        f"two-stage algorithm; smoothing: hinge on the score above {adaptive.margin} × threshold, "
        f"weight {adaptive.weight}, plus {adaptive.guards[0].ce_weight} × the cross entropy "
        "between the "
        "predictions on x and ψ(x)); adaptive attacks run "
        + (f"all {adaptive.steps} joint steps" if adaptive.patience is None else
           f"up to {adaptive.steps} joint steps with patience {adaptive.patience}")
        + " and λ × "
        f"{adaptive.lam_scale}, without ADV²'s step search (ADV²: the CLI's defaults); A*(all): "
        "one adaptive ADV² against all squeezers at once (NLM through BPDA). Adaptive attacks "
        "keep only iterates that no guarded squeezer flags.",
        "",
        "## Table 4: detection rate (held-out benign: false-positive rate)",
        "",
        f"Benign (FPR): the held-out false-positive rate by {args.folds}-fold cross-validation: "
        f"each benign image is scored against thresholds fitted the same way on the other "
        f"{args.folds - 1} folds (about {args.benign - args.benign // args.folds} images), so "
        f"every one of the {args.benign} is held out once. The thresholds shown, which the "
        "attacks face, are fitted on all of them.",
        "",
        table4.markdown().removesuffix("\n"),
        "",
        "## Table 5: attack success and interpretation similarity to the benign map",
        "",
        table5.markdown().removesuffix("\n"),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 2 <= args.folds <= args.benign:
        parser.error(f"--folds {args.folds}: need 2 ≤ folds ≤ --benign ({args.benign})")
    if images_missing(args.images, "the report"):
        return 1
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    model = load_model(device=args.device)
    samples = load_dataset(args.images).samples
    images = np.stack([s.image for s in samples])
    labels = np.array([s.label for s in samples])
    interpreters = {spec: build_interpreter(spec.split(":")[0], model)
                    for spec in args.interpreters}
    fitted = np.array([any(s.key in i.fitted_on for i in interpreters.values())
                       for s in samples])
    benign_idx, pool_idx = split(len(samples), args.benign, args.seed, fitted)
    detectors = Detectors(model, args.squeezers, images[benign_idx], args.fpr, args.folds,
                          args.seed)
    pool_pred = predict(model, images[pool_idx], 25).argmax(1).cpu().numpy()
    correct = pool_idx[pool_pred == labels[pool_idx]]
    table4, table5 = tables(args)
    saved = 0.0  # a resumed run's total counts its read-back outcomes at their recorded cost
    for spec, (name, n) in zip(args.interpreters, interpreter_plan(args.interpreters)):
        adaptive, more = measure(args, model, detectors, interpreters[spec], name, n,
                                 [samples[i] for i in correct[:n]], table4, table5)
        saved += more
    minutes = (time.time() - started + saved) / 60
    publish(report(args, minutes, len(pool_idx), bool(fitted.any()), adaptive, table4, table5),
            args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
