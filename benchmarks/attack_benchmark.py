"""PGD vs ADV² on correctly classified images of ../shared/data/imagenet-sample.

Seeded random targets drawn per image as ``adv2 attack`` draws them (from the seed and the
image's key: ``adv2.target_classes.per_image_targets``), benign target maps, the embedded
EfficientNet-Lite0, ε = 8/255, the CLI's default attack settings. Prints one Markdown table
(and writes it with --out): success, confidence, L1, IoU mean, seconds and passes per image,
the interpreter's noise floor (benign map vs the map of the image plus ±1/255 noise), and the
cost of one attack step relative to one PGD step (forward + backward on the true model), timed
in the same run; with GRAD, a table of GRAD's unit costs (forward, forward + backward, explain,
attack step on the fast and the generic surrogate, double-backprop HVPs) in forward + backward
units at batch 1 and the attack's batch.

    python benchmarks/attack_benchmark.py --interpreters cam:20 --supports full edges \
        --out docs/benchmarks/cam.md
    python benchmarks/attack_benchmark.py --interpreters grad:8 --supports full edges \
        --out docs/benchmarks/grad.md
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from adv2 import pipeline
from adv2.attacks import DISPLAY_NAMES
from adv2.benchmarking import (add_page_options, benign_and_floors, chooses_surrogate,
                               error_by_support, image_targets, images_missing,
                               interpreter_plan, pick_images, publish, run_batches, stacked,
                               step_cost, support_fractions, surrogate_unit_costs)
from adv2.experiment.tables import Table
from adv2.interpreters import INTERPRETERS, MASK_STRATEGIES, build_interpreter
from adv2.key_value import parse_setting
from adv2.models import describe_device, load_model
from adv2.target_classes import interpreter_seeds

COLUMNS = ["interpreter", "attack", "n", "success", "confidence", "L1", "IoU mean",
           "IoU@10/20/30/40/50%", "s / image", "passes / image", "pixels changed", "‖δ‖₂"]
FORMATS = ["", "", "d", ".3f", ".3f", ".4f", ".3f", "", ".2f", ".1f", ".3f", ".2f"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interpreters", nargs="+", default=["cam:20", "grad:8"],
                        help="interpreter:n_images pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mask-strategies", nargs="+", choices=MASK_STRATEGIES,
                        default=list(MASK_STRATEGIES), help="ADV² rows for MASK, one per strategy")
    parser.add_argument("--interpreter-setting", action="append", default=[],
                        metavar="KEY=VALUE", dest="settings",
                        help="keyword of the interpreter's class, for benign maps, floor and "
                             "attacks alike (every interpreter of --interpreters takes it)")
    parser.add_argument("--supports", nargs="+", default=["full"],
                        help="ADV² rows, one per support (full, edges, target-map:q, ...)")
    add_page_options(parser, __file__)
    return parser


class Results:
    """What the report gathers: the main table, the step costs, the surrogate unit costs of
    the last interpreter that :func:`~adv2.benchmarking.chooses_surrogate`, and notes."""

    def __init__(self) -> None:
        self.table = Table("attacks", "PGD vs ADV²", COLUMNS, FORMATS, blank="", aligned=False)
        self.ratios = Table("step-cost", "ADV² step / PGD step",
                            ["interpreter", "ADV² step / PGD step"], ["", ".2f"], aligned=False)
        self.unit_costs: Table | None = None
        self.notes: list[str] = []

    def add(self, row: list) -> None:
        """A row of the main table, printed as it comes."""
        self.table.rows.append(row)
        print(self.table.line(row), flush=True)


def runs_of(name: str, args: argparse.Namespace) -> list[tuple[str, str | None, str]]:
    """The (attack, MASK strategy, support) rows of one interpreter: PGD, then ADV² per support
    and strategy."""
    strategies = INTERPRETERS[name].attack_strategies
    return [("pgd", None, "full")] + [
        ("adv2", strategy, support) for support in args.supports
        for strategy in ([s for s in args.mask_strategies if s in strategies]
                         if strategies else [None])]


def measure(results: Results, args: argparse.Namespace, model, pool: list, name: str,
            n: int, settings: dict) -> None:
    """One interpreter's rows: its floors, PGD and ADV² on its images, the step costs and
    (for an interpreter that chooses its surrogate) the unit costs."""
    interpreter = build_interpreter(name, model, **settings)
    fitted = interpreter.fitted_on
    samples = pick_images(model, args.images, n, args.seed, fitted) if fitted else pool[:n]
    if fitted:
        results.notes.append(f"{name}: the {n} images are the first correctly classified ones "
                             f"of the same permutation outside the {len(fitted)} images the "
                             "interpreter was trained on")
    x, labels = stacked(model, samples)  # tensors follow the model
    tgts = image_targets(model, samples, args.seed)
    keys = [s.key for s in samples]
    seeds = interpreter_seeds(args.seed, keys)  # what attack_batch seeds the attack with
    benign, floors = benign_and_floors(interpreter, x, labels, keys, args.seed)
    listed = bool(INTERPRETERS[name].attack_strategies or fitted or interpreter.stochastic)
    for label, floor_l1, floor_iou in floors:
        if listed:
            per_image = " ".join(f"{v:.2f}" for v in floor_iou.mean(1).tolist())
            results.notes.append(f"{name} {label} IoU per image: {per_image}")
        results.add([name, label, n, None, None, floor_l1.mean(), floor_iou.mean(),
                     _per_k(floor_iou), None, None, None, None])
    k = min(n, args.batch_size)
    for attack_name, strategy, support in runs_of(name, args):
        cfg = pipeline.AttackConfig(interpreter=name, attack=attack_name, seed=args.seed,
                                    support=support)
        attacked = (build_interpreter(name, model, **settings, strategy=strategy)
                    if strategy else interpreter)
        attack = pipeline.build_attack(cfg, model, attacked)
        cat, seconds = run_batches(cfg, model, attacked, attack, samples, tgts, args.batch_size,
                                   args.work)
        assert cat["linf"].max() <= round(255 * cfg.eps)
        tags = [t for t in (strategy, None if support == "full" else f"{support} support") if t]
        label = DISPLAY_NAMES[attack_name] + (f" ({', '.join(tags)})" if tags else "")
        results.add([name, label, n, cat["success"].mean(), cat["confidence"].mean(),
                     cat["l1"].mean(), cat["iou"].mean(), _per_k(cat["iou"]), seconds,
                     cat["passes"].mean(), cat["changed"].mean(), cat["l2"].mean()])
        if attack_name != "adv2":
            continue
        if support == "full":
            attacked.use_seeds(seeds[:k])
            results.ratios.rows.append([f"{name}{f' ({strategy})' if strategy else ''}",
                                        step_cost(model, attacked, x[:k], tgts[:k], benign[:k])])
        if strategy or fitted or support != "full" or interpreter.stochastic:
            per_image = " ".join(f"{v:.2f}" for v in cat["iou"].mean(1).tolist())
            results.notes.append(f"{name} {label} IoU per image (min "
                                 f"{cat['iou'].mean(1).min():.3f}): {per_image}")
        if support != "full":
            results.notes.append(f"{name} {support} support, fraction of the pixels per image: "
                                 f"{support_fractions(cat)}")
            results.notes.append(f"{name} {support} support, mean |map − target map| per "
                                 "image in the map cells the support reaches / the cells it "
                                 f"does not: {error_by_support(cat)}")
    if chooses_surrogate(interpreter):  # issue 22's unit costs of GRAD's attack step
        results.unit_costs = surrogate_unit_costs(interpreter, x[:k], tgts[:k], benign[:k],
                                                  settings)
        print(_lines(results.unit_costs), flush=True)


def _per_k(iou: torch.Tensor) -> str:
    return "/".join(f"{v:.2f}" for v in iou.mean(0).tolist())


def _lines(table: Table) -> str:
    return table.markdown().removesuffix("\n")


def report(args: argparse.Namespace, plan: list[tuple[str, int]], results: Results) -> str:
    """The Markdown page: command, machine and method, the tables, the notes."""
    unit_costs = results.unit_costs
    return "\n".join([
        f"# PGD vs ADV²: {', '.join(name for name, _ in plan)}",
        "",
        f"Command: `python benchmarks/attack_benchmark.py --interpreters "
        f"{' '.join(args.interpreters)} --seed {args.seed} --batch-size {args.batch_size}"
        + (f" --mask-strategies {' '.join(args.mask_strategies)}"
           if any(INTERPRETERS[name].attack_strategies for name, _ in plan) else "")
        + "".join(f" --interpreter-setting {text}" for text in args.settings)
        + (f" --supports {' '.join(args.supports)}" if args.supports != ["full"] else "")
        + (f" --device {args.device}" if args.device != "cpu" else "") + "`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{describe_device(args.device)}; "
        f"torch {torch.__version__}. Model: efficientnet_lite0 (embedded), ε = 8/255, "
        "benign target maps, seeded random targets per image (those of `adv2 attack` with the "
        "same seed), CLI default settings"
        + (f" except the interpreter's {', '.join(args.settings)}" if args.settings else "")
        + ". Metrics: the true "
        "interpreter on the final uint8 images; L1 and IoU (top-k%, mean over k) against the "
        "benign map. The floor row compares the benign map with the map of the clean image "
        "plus seeded uniform noise in {−1, 0, +1}/255 (same class, settings and noise seed). "
        "A stochastic interpreter (SmoothGrad, MASK) attacks with each image's seed and is judged, "
        "as a defender who redraws would, under another seed the attack never saw: its "
        "ADV² and PGD rows compare the map of the adversarial image with the benign map, "
        "both drawn under that seed, and its 'another seed' floor compares the benign maps "
        "of the two seeds. Pixels changed: the fraction of pixels with any channel changed; "
        "‖δ‖₂ in [0,1] units. A "
        "support (`--support`, adv2.attacks.support) confines ADV² in every stage.",
        "",
        _lines(results.table),
        "",
        "Cost of one attack step relative to one PGD step (forward + backward), same batch:",
        "",
        _lines(results.ratios),
        "",
        *([(f"{unit_costs.title} in forward + backward units (CE w.r.t. the input), median "
            "process CPU time, interleaved, same run:"), "", _lines(unit_costs), ""]
          if unit_costs else []),
        *(f"- {note}" for note in results.notes),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = dict(map(parse_setting, args.settings))
    if images_missing(args.images):
        return 1
    torch.manual_seed(args.seed)
    model = load_model(device=args.device)
    plan = interpreter_plan(args.interpreters)
    pool = pick_images(model, args.images, max(n for _, n in plan), args.seed)
    results = Results()
    for name, n in plan:
        measure(results, args, model, pool, name, n, settings)
    publish(report(args, plan, results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
