"""How close ADV² (track) gets to MASK's benign maps as its budget grows.

Runs one long ADV² attack on MASK per batch of the benchmark's seeded choice of correctly
classified images (their per-image targets, benign target maps) and records every cold-start
verification the engine makes: the verified map's IoU and L1 against the benign map, and the
passes each image has spent so far. The report gives, after each verification, the mean IoU of
the iterate the attack would return if it stopped there (its successful verified iterate of
lowest map loss), so one run shows the whole quality-versus-budget curve. The interpreter's
noise floor is in the same report. With ``--work``, each finished batch is kept and a rerun
measures only the batches it lacks.

    python benchmarks/mask_budget.py --n 8 --batch-size 4 --steps 1000 --lam 40:80 \
        --verify-every 50 --lookahead 4 --work mask-budget-work --out docs/benchmarks/mask-budget.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from adv2 import metrics, pipeline, target_maps
from adv2.attacks import Judgement
from adv2.benchmarking import (add_page_options, image_targets, images_missing, noise_floor,
                               pick_images, publish, settings_digest, stacked)
from adv2.data import Sample, image_digest
from adv2.experiment.tables import Table
from adv2.interpreters import build_interpreter
from adv2.models import Classifier, describe_device, load_model, model_digest
from adv2.records import write_json


#: the ADV² authors' multistep attack against MASK, in passes per image: 400 PGD steps, then
#: 1000 outer steps of one prediction step, 4 tracking steps and 4 double-backprop lookaheads
AUTHORS_PASSES = 29_400

#: the page's fixed explanation, after its title
INTRO = (
    "Does ADV² (track) reach MASK's benign maps if it may spend more? One long attack per "
    "batch of images records every cold-start verification the engine makes. The \"kept\" "
    "columns are what the attack would return if it stopped after that verification: per "
    "image, its successful verified iterate of lowest MSE to the benign map. The authors' "
    f"multistep attack spends about {AUTHORS_PASSES:,} passes per image (400 PGD steps, then "
    "1000 outer steps with double-backprop lookaheads); the budget aimed at is a tenth of "
    f"that, about {AUTHORS_PASSES // 10:,}. MASK's maps depend on the batch (BLAS reduction "
    "order, then MASK's chaos), so each batch has its own floor: the benign map against the "
    "map of the same image plus seeded noise in {−1, 0, +1}/255, in the same batch.")


class Recorder:
    """Keeps every cold-start verification the engine makes: an observer of the joint stage
    (:class:`~adv2.attacks.Judgement`), comparing each verified map with the benign map."""

    def __init__(self, n: int, benign: torch.Tensor) -> None:
        self.n, self.benign = n, benign
        self.verifications: list[dict] = []

    def __call__(self, judged: Judgement) -> None:
        if judged.maps is None:  # MASK's iterates are always verified; nothing else to keep
            return
        rows = judged.rows
        self.verifications.append({
            "rows": rows, "passes": judged.passes, "success": judged.success,
            "iou": metrics.iou(judged.maps, self.benign[rows]).mean(dim=1),
            "l1": metrics.l1(judged.maps, self.benign[rows]), "distance": judged.distance})

    def joint_passes(self) -> torch.Tensor:
        """Passes per image of the joint stage, at its last full verification."""
        full = [v for v in self.verifications if len(v["rows"]) == self.n]
        return full[-1]["passes"]

    def curve(self, warm: torch.Tensor) -> list[tuple[float, float, float, float, float]]:
        """After each full verification: (mean passes incl. the warm start, mean IoU and L1
        of the verified iterates, mean IoU and L1 of the kept iterates; NaN while an image has
        no successful one)."""
        n = self.n
        device = self.benign.device
        best = torch.full((n,), float("inf"), device=device)
        kept_iou = torch.full((n,), float("nan"), device=device)
        kept_l1 = torch.full((n,), float("nan"), device=device)
        rows_out = []
        for v in self.verifications:
            rows = v["rows"]
            better = v["success"] & (v["distance"] < best[rows])
            best[rows[better]] = v["distance"][better]
            kept_iou[rows[better]] = v["iou"][better]
            kept_l1[rows[better]] = v["l1"][better]
            if len(rows) == n:
                rows_out.append((float((v["passes"] + warm).float().mean()),
                                 float(v["iou"].mean()), float(v["l1"].mean()),
                                 float(kept_iou.mean()), float(kept_l1.mean())))
        return rows_out


def curve_table(curve: list[tuple[float, float, float, float, float]]) -> Table:
    """One row per full verification of :meth:`Recorder.curve`, its passes also as a
    percentage of the authors' attack."""
    table = Table("curve", "quality against budget",
                  ["verification", "passes / image", "% of the authors'", "verified IoU",
                   "verified L1", "kept IoU", "kept L1"],
                  ["d", ".0f", ".1f", ".3f", ".4f", ".3f", ".4f"], aligned=False)
    table.rows = [[i, passes, 100 * passes / AUTHORS_PASSES, iou, l1, k_iou, k_l1]
                  for i, (passes, iou, l1, k_iou, k_l1) in enumerate(curve, 1)]
    return table


def batch_key(args: argparse.Namespace, model: Classifier, samples: list[Sample]) -> str:
    """The name one batch's results go by in ``--work``: a digest of everything they depend
    on (the settings, the images, the model's weights), so that a changed batch is remade."""
    described = {"settings": {k: getattr(args, k) for k in SETTINGS},
                 "images": [[s.key, image_digest(s.image)] for s in samples],
                 "model": model_digest(model)}
    return f"batch-{settings_digest(described)}.json"


#: the arguments one batch's results depend on
SETTINGS = ("seed", "steps", "lam", "verify_every", "lookahead")


def measure_batch(args: argparse.Namespace, model: Classifier, samples: list[Sample]) -> dict:
    """One long ADV² attack on ``samples``: the names, floors (IoU per image, mean L1), the
    curve of :meth:`Recorder.curve`, the returned iterates' success, IoU and L1 per image
    and passes, the minutes and torch threads it took (a kept IoU or L1 no image has yet:
    None)."""
    torch.manual_seed(args.seed)
    x, labels = stacked(model, samples)  # tensors follow the model
    tgts = image_targets(model, samples, args.seed)  # as attack_benchmark.py and adv2 attack
    mask = build_interpreter("mask", model, lookahead=args.lookahead,
                             verify_every=args.verify_every)
    benign = target_maps.benign(mask, x, labels)
    floor_l1, floor_iou = noise_floor(mask, x, labels, benign, args.seed)
    # no step search and no patience: every image runs all the steps
    cfg = pipeline.AttackConfig(interpreter="mask", attack="adv2", seed=args.seed,
                                steps=args.steps, lam=args.lam, step_search=False, patience=0)
    recorder = Recorder(len(samples), benign)
    attack = dataclasses.replace(pipeline.build_attack(cfg, model, mask), observer=recorder)
    start = time.time()
    result = attack(np.stack([s.image for s in samples]), tgts, benign)
    minutes = (time.time() - start) / 60
    warm = result.passes - recorder.joint_passes()
    curve = [[None if np.isnan(v) else v for v in c] for c in recorder.curve(warm)]  # JSON
    return {"names": [s.name for s in samples], "floor_iou": floor_iou.mean(1).tolist(),
            "floor_l1": float(floor_l1.mean()), "curve": curve,
            "success": result.success.float().tolist(), "iou": result.iou.mean(1).tolist(),
            "l1": result.l1.tolist(), "passes": float(result.passes.float().mean()),
            "minutes": minutes, "threads": torch.get_num_threads()}


def kept(value: float | None) -> str:
    """A kept IoU as the page prints it ("–" while some image has no successful iterate)."""
    return "–" if value is None else f"{value:.3f}"


def reading(batch: dict) -> list[str]:
    """The batch's findings, read off its numbers: the kept IoU at a tenth of the authors'
    budget, at its peak and at the end, and the returned iterates against the floor."""
    curve, floor = batch["curve"], float(np.mean(batch["floor_iou"]))
    tenth = min(curve, key=lambda c: abs(c[0] - AUTHORS_PASSES / 10))
    peak = max(curve, key=lambda c: -1.0 if c[3] is None else c[3])
    iou = float(np.mean(batch["iou"]))
    near = sum(i >= f - 0.05 for i, f in zip(batch["iou"], batch["floor_iou"]))
    return [
        f"- At the verification nearest a tenth of the authors' budget ({tenth[0]:.0f} passes, "
        f"{100 * tenth[0] / AUTHORS_PASSES:.1f}% of the authors'), the kept IoU is "
        f"{kept(tenth[3])}; it peaks at {kept(peak[3])} ({peak[0]:.0f} passes) and ends at "
        f"{kept(curve[-1][3])} ({curve[-1][0]:.0f} passes, "
        f"{100 * curve[-1][0] / AUTHORS_PASSES:.0f}% of the authors').",
        f"- The returned iterates' IoU is {iou:.3f} against a floor of {floor:.3f} (gap "
        f"{floor - iou:.3f}); {near} of {len(batch['iou'])} images come within 0.05 of their "
        "floor.",
    ]


def batch_section(first: int, batch: dict) -> list[str]:
    """One batch's part of the page: its images, floor, curve, returned iterates, reading."""
    n = len(batch["names"])
    return [
        (f"## Images {first + 1}–{first + n}: " if n > 1 else f"## Image {first + 1}: ")
        + ", ".join(batch["names"]),
        "",
        f"{batch['minutes']:.0f} min on {batch['threads']} torch thread(s). Floor: IoU "
        f"{np.mean(batch['floor_iou']):.3f}, L1 {batch['floor_l1']:.4f}; per image "
        + " ".join(f"{v:.2f}" for v in batch["floor_iou"]) + ".",
        "",
        curve_table([[float("nan") if v is None else v for v in c]
                     for c in batch["curve"]]).markdown(),
        f"Returned iterates (the engine's choice, judged on the uint8 images): success "
        f"{np.mean(batch['success']):.3f}, IoU {np.mean(batch['iou']):.3f}, L1 "
        f"{np.mean(batch['l1']):.4f}, {batch['passes']:.0f} passes per image; IoU per image "
        + " ".join(f"{v:.2f}" for v in batch["iou"]) + ".",
        "",
        *reading(batch),
        "",
    ]


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces the page."""
    return (f"python benchmarks/mask_budget.py --n {args.n} --batch-size {args.batch_size} "
            f"--seed {args.seed} --steps {args.steps} --lam {args.lam} --verify-every "
            f"{args.verify_every} --lookahead {args.lookahead}"
            + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
            + (f" --device {args.device}" if args.device != "cpu" else ""))


def report(args: argparse.Namespace, batches: list[dict]) -> str:
    """The page: its fixed explanation, command, machine, the summary over all images and one
    section per batch."""
    iou = [v for b in batches for v in b["iou"]]
    floor = [v for b in batches for v in b["floor_iou"]]
    kept_tenth = [min(b["curve"], key=lambda c: abs(c[0] - AUTHORS_PASSES / 10))[3]
                  for b in batches]
    lines = [
        INTRO,
        "",
        f"Command: `{command(args)}`",
        "",
        f"Machine: {platform.machine()}, {describe_device(args.device)}; torch "
        f"{torch.__version__}; {sum(b['minutes'] for b in batches):.0f} min in all. MASK "
        f"with its default settings; ADV² (track) with a {args.lookahead}-step lookahead, λ "
        f"{args.lam}, {args.steps} joint steps, a cold-start verification every "
        f"{args.verify_every} steps, no step search, no patience; one attack per batch of "
        f"{args.batch_size}. Passes per image include the PGD warm start.",
        "",
        f"## All {len(iou)} images",
        "",
        f"Returned iterates: success {np.mean([v for b in batches for v in b['success']]):.3f}, "
        f"IoU {np.mean(iou):.3f} against a floor of {np.mean(floor):.3f}, at "
        f"{np.mean([b['passes'] for b in batches]):.0f} passes per image. The kept IoU nearest a "
        "tenth of the authors' budget, per batch: "
        + " ".join(kept(v) for v in kept_tenth) + ".",
        "",
    ]
    for i, batch in enumerate(batches):
        lines += batch_section(i * args.batch_size, batch)
    return "\n".join(lines)


def batch_at(args: argparse.Namespace, lo: int, model: Classifier | None = None) -> dict:
    """The batch of the selected images from the ``lo``-th: read back from ``--work``, or
    measured (and kept there); on ``model``, else loaded here (a worker process of its own
    with ``--jobs`` > 1, on one torch thread)."""
    if model is None:
        torch.set_num_threads(1)
        model = load_model(device=args.device)
    chosen = pick_images(model, args.images, args.n, args.seed)[lo:lo + args.batch_size]
    kept = None if args.work is None else args.work / batch_key(args, model, chosen)
    if kept is not None and kept.exists():
        return json.loads(kept.read_text())
    batch = measure_batch(args, model, chosen)
    if kept is not None:
        write_json(kept, batch)
    print(f"images {lo + 1}–{lo + len(chosen)}: {batch['minutes']:.0f} min", flush=True)
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="images, in batches of --batch-size")
    parser.add_argument("--batch-size", type=int, default=4, help="images per long attack")
    parser.add_argument("--steps", type=int, default=1000, help="ADV² joint steps")
    parser.add_argument("--lam", default="40:80", help="λ schedule, as `adv2 attack --lam`")
    parser.add_argument("--verify-every", type=int, default=50)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1,
                        help="batches measured at once, each in its own process on one thread")
    add_page_options(parser, __file__, work="keep each finished batch here; the same "
                     "command with the same --work measures only the batches it lacks")
    args = parser.parse_args(argv)
    if images_missing(args.images):
        return 1
    starts = range(0, args.n, args.batch_size)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            batches = list(pool.map(batch_at, [args] * len(starts), starts))
    else:
        model = load_model(device=args.device)
        batches = [batch_at(args, lo, model) for lo in starts]
    publish(report(args, batches), args.out, "# ADV² on MASK: quality against budget\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
