"""``adv2 demo``: ADV² vs PGD against CAM on six bundled images."""

from __future__ import annotations

import argparse
from pathlib import Path

from adv2 import pipeline
from adv2.attack_config import AttackConfig
from adv2.cli.helptext import with_default
from adv2.cli.options import command_parser
from adv2.data import demo_images
from adv2.figures import demo_figure
from adv2.models import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``adv2 demo``'s parser."""
    demo = command_parser(sub, "demo", "ADV² vs PGD against CAM on the embedded default model")
    demo.add_argument("--out", default="adv2-demo", help=with_default("output directory",
                                                                      "adv2-demo"))
    demo.add_argument("--seed", type=int, default=0, help=with_default(
        "the attacks' seed, as 'adv2 attack --seed'", 0))


def execute(args: argparse.Namespace) -> int:
    """Run ``adv2 demo``: PGD and ADV² against CAM on the bundled images, then ``demo.png``;
    prints their means. Returns the exit code."""
    out = Path(args.out)
    model = load_model()
    samples = demo_images()
    summaries = {}
    for attack in ("pgd", "adv2"):
        cfg = AttackConfig(interpreter="cam", attack=attack, seed=args.seed)
        summaries[attack] = pipeline.run(cfg, model, samples, out / attack)
    demo_figure(out, [s.name for s in samples])
    print(f"{'attack':8s} {'success':>8s} {'L1':>8s} {'IoU':>8s} {'passes':>8s}")
    for attack, s in summaries.items():
        print(f"{attack:8s} {s['success_rate']:8.3f} {s['l1_mean']:8.4f} {s['iou_mean']:8.3f} "
              f"{s['passes_per_image']:8.1f}")
    print(f"report: {(out / 'demo.png').resolve()} (per-image details in {out.resolve()}/pgd "
          f"and {out.resolve()}/adv2)")
    return 0
