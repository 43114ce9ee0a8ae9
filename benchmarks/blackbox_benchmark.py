"""Black-box attacks on correctly classified images of ../shared/data/imagenet-sample.

The embedded EfficientNet-Lite0 is attacked through a query oracle (adv2.blackbox.Oracle),
ε = 8/255, benign target maps, each image's target drawn by the rule of ``adv2 attack``
(``target_classes.per_image_targets``), at most ``--queries`` queries per image. Rows per
interpreter: white-box ADV² (for reference), the transfer start alone (the momentum +
input-diversity attack on the ``--surrogate`` models), the score-based random search on the
prediction alone, black-box ADV² from Square's random start and from the transfer start, and
torchattacks.Square (targeted, margin loss, the same images, targets, ε and budget) as the peer.
Every row is judged by the true interpreter on the final uint8 image. Writes one Markdown page
with --out.

    python benchmarks/blackbox_benchmark.py --interpreters cam:20 grad:8 \
        --out docs/benchmarks/blackbox.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from adv2 import pipeline
from adv2.attacks.result import judge
from adv2.benchmarking import (add_page_options, attack_samples, benign_and_floors,
                               image_targets, images_missing, interpreter_plan, pick_images,
                               publish, settings_digest, stacked)
from adv2.data import Sample, image_digest, to_tensor
from adv2.interpreters import build_interpreter
from adv2.models import describe_device, load_model, model_digest
from adv2.records import write_json


@dataclass(frozen=True)
class Scored:
    """One image's numbers in a row: success, IoU (per k), L1 and the queries it spent (None:
    a white-box attack), judged by the true interpreter on the uint8 image."""

    success: bool
    iou: list[float]
    l1: float
    queries: int | None

EXPLANATION = (
    "White-box ADV² differentiates the model and the interpreter (`adv2 attack`, its default "
    "settings) and is the reference. Every other row sees only the oracle: the probabilities "
    "(`--answers scores`, the random search and Square) or the probabilities and the map of "
    "the predicted class (`scores+map`, black-box ADV²). The transfer start is a targeted "
    "momentum + input-diversity "
    "attack on the surrogate models (`adv2.blackbox.TransferAttack`, 100 steps); alone it "
    "costs no query. Queries count every image the oracle answered, the start "
    "included; an image that misses its target has spent the whole budget. The random search "
    "and black-box ADV² are `adv2 attack --threat black-box` with `--attack pgd` and "
    "`--attack adv2`; torchattacks.Square runs one image at a time so that its queries are "
    "counted per image (every forward pass of the model). Black-box ADV² takes each "
    "interpreter's defaults (`adv2 attack --threat black-box -h`): λ 50, an image stops once "
    "its oracle map's IoU to the target map reaches 0.9, and CAM's first square covers 2% of "
    "the image (`--p-init 0.02`, chosen among 0.01, 0.02, 0.03 and 0.05 on the 21st to 24th "
    "selected images, which no row reports); the prediction-only search and Square start at "
    "Square's 0.05. Each image draws its squares from its own seed, whatever its batch, but "
    "the model's batched forward pass differs from one image's in the last bits of its "
    "floats, so the rows reproduce with `adv2 attack --batch-size 10` on the same images "
    "(alone, an image's search can take another path).")


def attack_rows(cfg: pipeline.AttackConfig, model, interpreter, samples: list[Sample],
                tgts: torch.Tensor, batch_size: int,
                work: Path | None = None) -> tuple[list[Scored], float]:
    """The attack ``cfg`` describes on ``samples`` as ``adv2 attack`` runs it: each image's
    numbers (from its :class:`~adv2.outcome.Outcome`) and the seconds per image (``work``:
    the folder that keeps each image's outcome, :func:`~adv2.benchmarking.attack_samples`)."""
    attack = pipeline.build_attack(cfg, model, interpreter)
    outcomes, seconds = attack_samples(cfg, model, interpreter, attack, samples, tgts,
                                       batch_size, work)
    return [Scored(o.success, o.iou, o.l1, o.queries) for o in outcomes], seconds


class Counted(torch.nn.Module):
    """The model, counting the images it is run on (torchattacks.Square's queries)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


def square_rows(model, interpreter, samples: list[Sample], tgts: torch.Tensor, benign,
                eps: float, queries: int, seed: int,
                work: Path | None = None) -> tuple[list[Scored], float]:
    """torchattacks.Square, targeted, margin loss, p_init 0.05, one image at a time: each
    image's success, L1, IoU (the true interpreter on the uint8 image) and queries, and the
    seconds per image (``work``: a folder that keeps each image's numbers and seconds, read
    back by a rerun of the same settings)."""
    import torchattacks

    counted = Counted(model).eval()
    scored, seconds = [], []
    for j, s in enumerate(samples):
        t = tgts[j:j + 1]
        kept = None if work is None else work / "square" / (settings_digest({
            "eps": eps, "queries": queries, "seed": seed, "p_init": 0.05, "image": s.key,
            "input": image_digest(s.image), "target": int(t), "model": model_digest(model),
            "interpreter": interpreter.config()}) + ".json")
        if kept is not None and kept.exists():
            record = json.loads(kept.read_text())
            scored.append(Scored(**record["scored"]))
            seconds.append(record["seconds"])
            continue
        start = time.time()
        x = to_tensor(s.image).to(model.device)
        attack = torchattacks.Square(counted, norm="Linf", eps=eps, n_queries=queries,
                                     p_init=0.05, loss="margin", seed=seed)
        attack.set_mode_targeted_by_label(quiet=True)
        counted.images = 0
        adv = attack(x, t)
        spent = counted.images
        result = judge(adv, x, t, model, torch.zeros(1, device=x.device), interpreter,
                       benign[j:j + 1])
        scored.append(Scored(bool(result.success[0]), result.iou[0].tolist(),
                            float(result.l1[0]), spent))
        seconds.append(time.time() - start)
        if kept is not None:
            write_json(kept, {"scored": dataclasses.asdict(scored[-1]), "seconds": seconds[-1]})
    model.eval()
    return scored, sum(seconds) / len(samples)


def row(name: str, label: str, scored: list[Scored], seconds: float | None) -> str:
    """One table row: success, IoU, L1, queries (median, mean), seconds per image."""
    iou = [float(np.mean(m.iou)) for m in scored]
    spent = [m.queries for m in scored] if scored[0].queries is not None else None
    queries = (f"{statistics.median(spent):.0f} | {statistics.mean(spent):.0f}" if spent
               else "| ")
    return (f"| {name} | {label} | {len(scored)} | "
            f"{np.mean([float(m.success) for m in scored]):.3f} | {np.mean(iou):.3f} | "
            f"{np.mean([m.l1 for m in scored]):.4f} | {queries} | "
            + (f"{seconds:.1f} |" if seconds is not None else " |"))


def runs(surrogate: str, queries: int, seed: int) -> list[tuple[str, dict | None]]:
    """The rows of one interpreter: (label, AttackConfig settings; None for torchattacks)."""
    black = dict(threat="black-box", queries=queries)
    return [
        ("white-box ADV²", dict(attack="adv2")),
        (f"transfer from {surrogate} only",
         dict(attack="adv2", **black | {"queries": 0}, surrogate=surrogate)),
        ("random search (prediction only)", dict(attack="pgd", answers="scores", **black)),
        ("black-box ADV², random start", dict(attack="adv2", **black)),
        ("black-box ADV², transfer start", dict(attack="adv2", **black, surrogate=surrogate)),
        ("torchattacks.Square (prediction only)", None),
    ]


def measure(args: argparse.Namespace, name: str, n: int,
            label: str) -> tuple[list[Scored], float]:
    """One row on the first ``n`` selected images: each image's numbers, seconds per image (in a
    worker process of its own with ``--jobs`` > 1, one torch thread each)."""
    if args.jobs > 1:
        torch.set_num_threads(1)
    model, samples, interpreter, x, labels = _chosen(args, name, n)
    tgts = image_targets(model, samples, args.seed)
    settings = dict(runs(args.surrogate, args.queries, args.seed))[label]
    if settings is None:
        benign, _ = benign_and_floors(interpreter, x, labels, [s.key for s in samples],
                                      args.seed)
        return square_rows(model, interpreter, samples, tgts, benign,
                           pipeline.AttackConfig.eps, args.queries, args.seed, args.work)
    cfg = pipeline.AttackConfig(interpreter=name, seed=args.seed, **settings)
    return attack_rows(cfg, model, interpreter, samples, tgts, args.batch_size, args.work)


def _chosen(args: argparse.Namespace, name: str, n: int) -> tuple:
    """The model on ``--device``, the first ``n`` selected images, the interpreter, and the
    images and labels on the model's device."""
    model = load_model(device=args.device)
    samples = pick_images(model, args.images, n, args.seed)
    return model, samples, build_interpreter(name, model), *stacked(model, samples)


def floors(args: argparse.Namespace, name: str, n: int) -> list[str]:
    """The interpreter's floor rows on the first ``n`` selected images."""
    _, samples, interpreter, x, labels = _chosen(args, name, n)
    _, rows = benign_and_floors(interpreter, x, labels, [s.key for s in samples], args.seed)
    return [f"| {name} | {label} | {n} | | {iou.mean():.3f} | {l1.mean():.4f} | | | |"
            for label, l1, iou in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interpreters", nargs="+", default=["cam:20", "grad:8"],
                        help="NAME:N, attacked on the first N selected images")
    parser.add_argument("--queries", type=int, default=10_000, help="budget per image")
    parser.add_argument("--surrogate", default="efficientnet_lite1+efficientnet_lite2")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1,
                        help="rows measured at once, each in its own process on one thread")
    add_page_options(parser, __file__)
    args = parser.parse_args(argv)
    if images_missing(args.images):
        return 1
    torch.manual_seed(args.seed)
    plan = interpreter_plan(args.interpreters)
    jobs = [(name, n, label) for name, n in plan
            for label, _ in runs(args.surrogate, args.queries, args.seed)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(measure, args, *job) for job in jobs]
            results = [f.result() for f in futures]
    else:
        results = [measure(args, *job) for job in jobs]
    measured = {job: result for job, result in zip(jobs, results)}
    lines = ["| interpreter | attack | n | success | IoU mean | L1 | queries median | "
             "queries mean | s / image |", "|" + "---|" * 9]
    notes = []
    for name, n in plan:
        lines += floors(args, name, n)
        for label, _ in runs(args.surrogate, args.queries, args.seed):
            scored, seconds = measured[name, n, label]
            lines.append(row(name, label, scored, seconds))
        ours = measured[name, n, "random search (prediction only)"][0]
        square = measured[name, n, "torchattacks.Square (prediction only)"][0]
        both = [(a.queries, b.queries) for a, b in zip(ours, square)
                if a.success and b.success]
        if both:
            ratio = statistics.median(a / b for a, b in both)
            notes.append(f"{name}: random search / torchattacks.Square queries per image, on "
                         f"the {len(both)} images both attacks fooled: median ratio {ratio:.2f}")
        for label, _ in runs(args.surrogate, args.queries, args.seed)[1:]:
            scored = measured[name, n, label][0]
            notes.append(f"{name} {label}, per image: success " + "".join(
                str(int(m.success)) for m in scored) + "; IoU " + " ".join(
                f"{np.mean(m.iou):.2f}" for m in scored) + "; queries " + " ".join(
                str(m.queries) for m in scored))

    report = [
        "# Black-box attacks: " + ", ".join(name for name, _ in plan),
        "",
        "Command: `python benchmarks/blackbox_benchmark.py --interpreters "
        f"{' '.join(args.interpreters)} --seed {args.seed} --queries {args.queries} "
        f"--surrogate {args.surrogate} --batch-size {args.batch_size} --jobs {args.jobs}"
        + (f" --device {args.device}" if args.device != "cpu" else "") + "`",
        "",
        f"Machine: {platform.machine()}, "
        + ("1 torch thread per row, rows measured "
           f"{args.jobs} at a time" if args.jobs > 1 else f"{torch.get_num_threads()} torch "
                                                          "threads")
        + f", {describe_device(args.device)}; torch {torch.__version__}. Model: efficientnet_lite0 "
        f"(embedded) attacked, ε = 8/255, benign target maps, each image's target drawn as "
        f"`adv2 attack --seed {args.seed}` draws it, at most {args.queries} queries per image. "
        "Metrics: the true interpreter on the final uint8 images; L1 and IoU (top-k%, mean "
        "over k = 10..50%) against the benign map; the floor row compares the benign map with "
        "the map of the clean image plus seeded ±1/255 noise.",
        "",
        EXPLANATION,
        "",
        *lines,
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    publish("\n".join(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
