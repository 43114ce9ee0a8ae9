"""How close ADV² (track) gets to MASK's benign maps as its budget grows.

Runs one long ADV² attack on MASK (the benchmark's seeded choice of correctly classified
images and targets, benign target maps) and records every cold-start verification the engine
makes: the verified map's IoU and L1 against the benign map, and the passes each image has
spent so far. The report gives, after each verification, the mean IoU of the iterate the
attack would return if it stopped there (its successful verified iterate of lowest map loss),
so one run shows the whole quality-versus-budget curve. The interpreter's noise floor is in the
same report.

    python benchmarks/mask_budget.py --n 4 --steps 1000 --lam 40:80 --verify-every 50 \
        --out docs/benchmarks/mask-budget.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adv2 import metrics, pipeline, target_maps
from adv2.attacks import Judgement
from adv2.benchmarking import (default_images, image_targets, images_missing, noise_floor,
                               pick_images, publish, stacked)
from adv2.experiment.tables import Table
from adv2.interpreters import build_interpreter
from adv2.models import describe_device, load_model

DEFAULT_IMAGES = default_images(__file__)

#: the ADV² authors' multistep attack against MASK, in passes per image: 400 PGD steps, then
#: 1000 outer steps of one prediction step, 4 tracking steps and 4 double-backprop lookaheads
AUTHORS_PASSES = 29_400


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=4, help="images (one batch)")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many of the seeded choice (attack_benchmark.py's order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000, help="ADV² joint steps")
    parser.add_argument("--lam", default="40:80", help="λ schedule, as `adv2 attack --lam`")
    parser.add_argument("--verify-every", type=int, default=50)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--device", default="cpu",
                        help="the torch device everything runs on (e.g. cuda)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if images_missing(args.images):
        return 1
    torch.manual_seed(args.seed)
    model = load_model(device=args.device)
    samples = pick_images(model, args.images, args.offset + args.n, args.seed)[args.offset:]
    x, labels = stacked(model, samples)  # tensors follow the model
    tgts = image_targets(model, samples, args.seed)  # as attack_benchmark.py and adv2 attack
    mask = build_interpreter("mask", model, lookahead=args.lookahead,
                             verify_every=args.verify_every)
    benign = target_maps.benign(mask, x, labels)
    floor_l1, floor_iou = noise_floor(mask, x, labels, benign, args.seed)
    # no step search and no patience: every image runs all the steps
    cfg = pipeline.AttackConfig(interpreter="mask", attack="adv2", seed=args.seed,
                                steps=args.steps, lam=args.lam, step_search=False, patience=0)
    recorder = Recorder(args.n, benign)
    attack = dataclasses.replace(pipeline.build_attack(cfg, model, mask), observer=recorder)
    start = time.time()
    result = attack(np.stack([s.image for s in samples]), tgts, benign)
    seconds = time.time() - start
    warm = result.passes - recorder.joint_passes()

    command = (f"python benchmarks/mask_budget.py --n {args.n}"
               + (f" --offset {args.offset}" if args.offset else "")
               + f" --seed {args.seed} --steps {args.steps} --lam {args.lam} --verify-every "
               f"{args.verify_every} --lookahead {args.lookahead}"
               + (f" --device {args.device}" if args.device != "cpu" else ""))
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{describe_device(args.device)}; torch {torch.__version__}; {seconds / 60:.0f} min. "
        "MASK with its default settings; ADV² "
        f"(track) with a {args.lookahead}-step lookahead, λ {args.lam}, {args.steps} joint "
        f"steps, a cold-start verification every {args.verify_every} steps, no step search, no "
        "patience. Passes per image include the PGD warm start.",
        "",
        f"Floor (benign map vs the map of the image plus ±1/255 noise): IoU "
        f"{floor_iou.mean():.3f}, L1 {floor_l1.mean():.4f}; per image "
        + " ".join(f"{v:.2f}" for v in floor_iou.mean(1).tolist()) + ".",
        "",
        curve_table(recorder.curve(warm)).markdown(),
        f"Returned iterates (the engine's choice, judged on the uint8 images): success "
        f"{result.success.float().mean():.3f}, IoU {result.iou.mean():.3f}, L1 "
        f"{result.l1.mean():.4f}, {result.passes.float().mean():.0f} passes per image; IoU per "
        "image " + " ".join(f"{v:.2f}" for v in result.iou.mean(1).tolist()) + ".",
        "",
    ]
    publish("\n".join(lines), args.out, "# ADV² on MASK: quality against budget\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
