"""ADV² with a support on images the attack benchmark does not report, for tuning settings.

The images are ``pool[offset:offset + n]`` of ``attack_benchmark.py``'s seeded pool of correctly
classified images (the benchmark reports ``pool[:n]``), with the targets the benchmark would
draw for them; attack settings are ``AttackConfig`` keys as KEY=VALUE (read as
``--interpreter-setting`` reads them; ``lam`` is text). Prints one line: success, L1, IoU,
passes, pixels changed, ‖δ‖₂, seconds per image, the IoU per image (``!`` marks a failure)
and, with a support, each image's support fraction and where its map misses its target
(``error_by_support``). ``--floors`` prints instead the interpreter's noise floors on these
images, as the benchmark computes them (a stochastic interpreter's under another seed too).

    python benchmarks/support_tuning.py cam --offset 20 --n 8 --support edges steps=400 lam=20:40
    python benchmarks/support_tuning.py mask --offset 0 --n 8 --support target-map:0.5 \
        --interpreter-setting strategy=alt
"""

from __future__ import annotations

import argparse
import sys

from adv2 import pipeline
from adv2.benchmarking import (benign_and_floors, default_images, error_by_support,
                               image_targets, pick_images, run_batches, stacked,
                               support_fractions)
from adv2.interpreters import build_interpreter
from adv2.key_value import parse_setting
from adv2.models import load_model

DEFAULT_IMAGES = default_images(__file__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("interpreter")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--offset", type=int, default=20)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--support", default="edges")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--interpreter-setting", action="append", default=[],
                        metavar="KEY=VALUE", dest="interpreter_settings",
                        help="keyword of the interpreter's class (e.g. MASK's strategy=alt)")
    parser.add_argument("--device", default="cpu",
                        help="the torch device everything runs on (e.g. cuda)")
    parser.add_argument("--floors", action="store_true",
                        help="print the interpreter's noise floors on these images, no attack")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE before or after the options
    overrides = dict(map(parse_setting, args.settings))
    if "lam" in overrides:  # a schedule text, even when it reads as a number
        overrides["lam"] = str(overrides["lam"])
    model = load_model(device=args.device)
    own = dict(map(parse_setting, args.interpreter_settings))
    interpreter = build_interpreter(args.interpreter, model, **own)
    # the benchmark's pool for this interpreter: never the images it was trained on
    pool = pick_images(model, DEFAULT_IMAGES, args.offset + args.n, args.seed,
                       interpreter.fitted_on)
    samples = pool[args.offset:]
    targets = image_targets(model, samples, args.seed)  # each image's own, as adv2 attack's
    if args.floors:
        x, labels = stacked(model, samples)
        _, floors = benign_and_floors(interpreter, x, labels, [s.key for s in samples],
                                      args.seed)
        for label, l1, iou in floors:
            print(f"{args.interpreter} {label}: L1 {l1.mean():.4f} IoU {iou.mean():.3f}; "
                  f"IoU per image {' '.join(f'{v:.2f}' for v in iou.mean(1).tolist())}")
        return 0
    cfg = pipeline.AttackConfig(interpreter=args.interpreter, attack="adv2", seed=args.seed,
                                support=args.support, **overrides)
    attack = pipeline.build_attack(cfg, model, interpreter)
    out, seconds = run_batches(cfg, model, interpreter, attack, samples, targets,
                               args.batch_size)
    per_image = " ".join(f"{iou:.2f}{'' if ok else '!'}" for iou, ok in
                         zip(out["iou"].mean(1).tolist(), out["success"].tolist()))
    name = f"{args.interpreter} {own}" if own else args.interpreter
    line = (f"{name} {args.support} {overrides}: success "
            f"{out['success'].mean():.3f} L1 {out['l1'].mean():.4f} IoU "
            f"{out['iou'].mean():.3f} passes "
            f"{out['passes'].mean():.1f} changed {out['changed'].mean():.3f} ‖δ‖₂ "
            f"{out['l2'].mean():.2f} s/image {seconds:.1f}; IoU per image {per_image}")
    if "support" in out:
        line += ("; support " + support_fractions(out)
                 + "; |map − target| in reached / unreached cells " + error_by_support(out))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
