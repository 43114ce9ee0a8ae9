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
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adv2 import metrics, pipeline, target_maps
from adv2.attacks import DISPLAY_NAMES, MapMSE
from adv2.cli import parse_setting
from adv2.data import load_dataset, to_tensor
from adv2.interpreters import INTERPRETERS, MASK_STRATEGIES, build_interpreter
from adv2.records import Failed
from adv2.models import describe_device, load_model
from adv2.target_classes import interpreter_seeds, per_image_targets

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "imagenet-sample"


def pick_images(model, folder: Path, n: int, seed: int, exclude: frozenset[str] = frozenset()):
    """The first n correctly classified images of a seeded permutation of the folder, skipping
    the sample keys in ``exclude`` (the images a trained interpreter was fitted on)."""
    samples = load_dataset(folder).samples
    order = np.random.default_rng(seed).permutation(len(samples))
    chosen = []
    with torch.no_grad():
        for i in order:
            s = samples[i]
            logits = model(to_tensor(s.image).to(model.device))
            if s.key not in exclude and int(logits.argmax()) == s.label:
                chosen.append(s)
            if len(chosen) == n:
                break
    return chosen


def image_targets(model, samples, seed: int) -> torch.Tensor:
    """Each sample's target class as ``adv2 attack`` and ``adv2 run`` draw it
    (``pipeline.run``: ``per_image_targets`` of the sample keys, the labels, the number of
    classes of the model's logits and the seed; no fixed class), on the model's device. The
    samples come from ``load_dataset`` of the images folder, so their keys are those that
    ``adv2 attack --images <folder>`` uses. An image without a target stops the benchmark."""
    with torch.no_grad():
        n_classes = model(to_tensor(samples[0].image).to(model.device)).shape[1]
    labels = torch.tensor([s.label for s in samples], device=model.device)
    tgts, why = per_image_targets([s.key for s in samples], labels, n_classes, seed, None)
    if why:
        raise RuntimeError("images without a target class: " + "; ".join(
            f"{samples[i].name}: {reason}" for i, reason in sorted(why.items())))
    return tgts


def noise_floor(interpreter, x: torch.Tensor, labels: torch.Tensor, benign: torch.Tensor,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The interpreter's own instability: L1 and IoU (N,×k) between the benign maps and the
    maps of the same images plus seeded uniform noise in {−1, 0, +1}/255 (same class, same
    interpreter settings and seed). An attacked map cannot be expected closer than this."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(-1, 2, x.shape, generator=gen, device="cpu").to(x) / 255  # host draws
    noisy = target_maps.benign(interpreter, (x + noise).clamp(0, 1), labels)
    return metrics.l1(noisy, benign), metrics.iou(noisy, benign)


def benign_and_floors(interpreter, x: torch.Tensor, labels: torch.Tensor, keys: list[str],
                      seed: int) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor,
                                                                     torch.Tensor]]]:
    """The benign maps under the attack's per-image seeds and the interpreter's floors, as
    (row label, L1 (N,), IoU (N×k)): ±1/255 noise (:func:`noise_floor`) and, for a stochastic
    interpreter, the same image under the judge's seeds (a defender redraws). The interpreter
    is left with the attack's seeds."""
    seeds = interpreter_seeds(seed, keys)
    interpreter.use_seeds(seeds)
    benign = target_maps.benign(interpreter, x, labels)
    floors = [("floor (±1/255 noise)", *noise_floor(interpreter, x, labels, benign, seed))]
    if interpreter.stochastic:
        interpreter.use_seeds(interpreter_seeds(seed, keys, judge=True))
        redrawn = target_maps.benign(interpreter, x, labels)
        floors.append(("floor (another seed)", metrics.l1(redrawn, benign),
                       metrics.iou(redrawn, benign)))
        interpreter.use_seeds(seeds)
    return benign, floors


def run_batches(cfg: pipeline.AttackConfig, model, interpreter, attack, samples,
                tgts: torch.Tensor, batch_size: int) -> tuple[dict, float]:
    """``pipeline.attack_batch`` (the batch body of ``adv2 attack`` and ``adv2 run``) over
    batches of ``samples``: the stacked per-image outcome (``adv`` uint8 images; ``success``,
    ``confidence``, ``l1``, ``iou`` (n×k), ``passes``, ``linf`` tensors) and seconds per image.
    Benign target maps (``cfg.target_map``); a non-finite outcome stops the benchmark."""
    outputs = []
    start = time.time()
    for lo in range(0, len(samples), batch_size):
        batch = samples[lo:lo + batch_size]
        outputs += pipeline.attack_batch(
            cfg, model, interpreter, attack, np.stack([s.image for s in batch]),
            torch.tensor([s.label for s in batch], device=model.device), tgts[lo:lo + batch_size],
            [s.name for s in batch], None)
    seconds = (time.time() - start) / len(samples)
    failed = [s.name for s, o in zip(samples, outputs) if isinstance(o, Failed)]
    if failed:
        raise RuntimeError(f"non-finite outcome for {failed}")
    metas = [meta for _, meta in outputs]
    out = {k: torch.tensor([float(m[k]) for m in metas], device="cpu")
           for k in ("success", "confidence", "l1", "passes", "linf", "changed", "l2")}
    out["iou"] = torch.tensor([m["iou"] for m in metas], device="cpu")
    for key in ("adv", "map", "target_map", "support"):
        if key in outputs[0][0]:
            out[key] = np.stack([arrays[key] for arrays, _ in outputs])
    return out, seconds


def support_fractions(out: dict) -> str:
    """The fraction of the pixels each image's support frees, as text, for ``out`` of
    :func:`run_batches` with a support."""
    return " ".join(f"{v:.2f}" for v in out["support"].reshape(len(out["support"]), -1)
                    .mean(1).tolist())


def error_by_support(out: dict) -> str:
    """Where a supported attack's map misses its target, as text: per image, the mean
    |map − target map| over the map cells the support reaches (any of its pixels non-zero)
    and over the cells it does not (``–`` where every cell is reached), for ``out`` of
    :func:`run_batches` with a support."""
    error = torch.from_numpy(np.abs(out["map"] - out["target_map"])).flatten(1)
    support = torch.from_numpy(out["support"])[:, None]
    reached = (F.adaptive_max_pool2d(support, out["map"].shape[-2:]) > 0).flatten(1)
    inside = (error * reached).sum(1) / reached.sum(1)
    outside = (error * ~reached).sum(1) / (~reached).sum(1)  # nan: every cell reached
    return " ".join(f"{i:.3f}/{'–' if o != o else f'{o:.3f}'}"
                    for i, o in zip(inside.tolist(), outside.tolist()))


def timed(fns: dict, repeats: int = 5) -> dict:
    """Median process CPU time of each callable, the callables run interleaved (one warm-up
    round first), so that a load on the machine shifts them alike."""
    runs: dict = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            if round_:
                runs[name].append(time.process_time() - start)
    return {name: statistics.median(r) for name, r in runs.items()}


def input_grad(model, x: torch.Tensor, t: torch.Tensor) -> None:
    """One forward + backward of the CE loss w.r.t. the input (a PGD step's work)."""
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), t), xg)


def attack_step(interpreter, x: torch.Tensor, t: torch.Tensor, target_maps: torch.Tensor) -> None:
    """One ADV² step's work: the attack loss at x and its gradient w.r.t. x."""
    xg = x.clone().requires_grad_(True)
    interpreter.start_attack(xg.detach(), t)
    logits, dist = interpreter.attack_loss(xg, t, target_maps, MapMSE(), 0.5)
    loss = torch.nn.functional.cross_entropy(logits, t) + dist.mean()
    torch.autograd.grad(loss, xg)


def step_cost(model, interpreter, x: torch.Tensor, t: torch.Tensor, target_maps: torch.Tensor,
              repeats: int = 5) -> float:
    """Median time of one ADV² step over one PGD step on the same batch."""
    times = timed({"pgd": lambda: input_grad(model, x, t),
                   "adv2": lambda: attack_step(interpreter, x, t, target_maps)}, repeats)
    return times["adv2"] / times["pgd"]


def hvp(net, x: torch.Tensor, t: torch.Tensor) -> None:
    """A Hessian-vector product of the CE loss w.r.t. the input by double backpropagation,
    ∇ₓ⟨∇ₓℓ, v⟩ with a fixed v (the shape of the second-order work of a GRAD step)."""
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(xg), t, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg, create_graph=True)
    torch.autograd.grad((g * x).sum(), xg)


def grad_unit_costs(model, x: torch.Tensor, t: torch.Tensor, target_maps: torch.Tensor,
                    settings: dict, repeats: int = 5) -> list[str]:
    """Markdown rows: GRAD's unit costs in forward + backward units at batch 1 and len(x)."""
    fast = build_interpreter("grad", model, **settings)
    generic = build_interpreter("grad", model, **{**settings, "fast": False})
    rows = [("forward, no grad", lambda xb, tb, mb: _no_grad(model, xb)),
            ("forward + backward (CE w.r.t. the input; one PGD step)",
             lambda xb, tb, mb: input_grad(model, xb, tb)),
            ("GRAD explain (true saliency)", lambda xb, tb, mb: fast.explain(xb, tb)),
            ("GRAD attack step, fast surrogate" + ("" if fast.fast else " (fell back: generic)"),
             lambda xb, tb, mb: attack_step(fast, xb, tb, mb)),
            ("GRAD attack step, generic SmoothReLU surrogate",
             lambda xb, tb, mb: attack_step(generic, xb, tb, mb)),
            ("HVP (double backprop), true model", lambda xb, tb, mb: hvp(model, xb, tb))]
    if fast.fast is not None:
        rows.append(("HVP (double backprop), fast surrogate (smooth mode)",
                     lambda xb, tb, mb: _fast_hvp(fast, xb, tb)))
    columns = []
    for k in sorted({1, len(x)}):
        xb, tb, mb = x[:k], t[:k], target_maps[:k]
        times = timed({name: (lambda fn=fn, xb=xb, tb=tb, mb=mb: fn(xb, tb, mb))
                       for name, fn in rows}, repeats)
        unit = times[rows[1][0]]
        columns.append((k, {name: v / unit for name, v in times.items()}, unit))
    lines = ["| what | " + " | ".join(f"batch {k}" for k, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{c[name]:.2f}" for _, c, _ in columns) + " |"
              for name, _ in rows]
    lines.append("| (one forward + backward, ms per batch) | "
                 + " | ".join(f"{1000 * u:.1f}" for _, _, u in columns) + " |")
    return lines


def _no_grad(model, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _fast_hvp(interpreter, x: torch.Tensor, t: torch.Tensor) -> None:
    xg = x.clone().requires_grad_(True)
    _, _, smooth = interpreter.fast(xg, t, interpreter.beta(0.5))
    torch.autograd.grad((smooth * x).sum(), xg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interpreters", nargs="+", default=["cam:20", "grad:8"],
                        help="interpreter:n_images pairs")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mask-strategies", nargs="+", choices=MASK_STRATEGIES,
                        default=list(MASK_STRATEGIES), help="ADV² rows for MASK, one per strategy")
    parser.add_argument("--interpreter-setting", action="append", default=[],
                        metavar="KEY=VALUE", dest="settings",
                        help="keyword of the interpreter's class, for benign maps, floor and "
                             "attacks alike (every interpreter of --interpreters takes it)")
    parser.add_argument("--supports", nargs="+", default=["full"],
                        help="ADV² rows, one per support (full, edges, target-map:q, ...)")
    parser.add_argument("--device", default="cpu",
                        help="the torch device everything runs on (e.g. cuda)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    settings = dict(map(parse_setting, args.settings))
    if not args.images.is_dir():
        print(f"{args.images} not found: the benchmark needs the ImageNet sample", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    model = load_model(device=args.device)
    plan = [(spec.split(":")[0], int(spec.split(":")[1])) for spec in args.interpreters]
    pool = pick_images(model, args.images, max(n for _, n in plan), args.seed)

    header = ("| interpreter | attack | n | success | confidence | L1 | IoU mean | "
              "IoU@10/20/30/40/50% | s / image | passes / image | pixels changed | ‖δ‖₂ |")
    lines = [header, "|" + "---|" * 12]
    ratios = []
    unit_costs: list[str] = []
    notes: list[str] = []
    for name, n in plan:
        interpreter = build_interpreter(name, model, **settings)
        fitted = interpreter.fitted_on
        samples = (pick_images(model, args.images, n, args.seed, fitted) if fitted
                   else pool[:n])
        if fitted:
            notes.append(f"{name}: the {n} images are the first correctly classified ones of "
                         f"the same permutation outside the {len(fitted)} images the "
                         "interpreter was trained on")
        images = np.stack([s.image for s in samples])
        x = to_tensor(images).to(model.device)  # tensors follow the model
        labels = torch.tensor([s.label for s in samples], device=model.device)
        tgts = image_targets(model, samples, args.seed)
        keys = [s.key for s in samples]
        seeds = interpreter_seeds(args.seed, keys)  # what attack_batch seeds the attack with
        benign, floors = benign_and_floors(interpreter, x, labels, keys, args.seed)
        for label, floor_l1, floor_iou in floors:
            per_k = "/".join(f"{v:.2f}" for v in floor_iou.mean(0).tolist())
            if INTERPRETERS[name].attack_strategies or fitted or interpreter.stochastic:
                per_image = " ".join(f"{v:.2f}" for v in floor_iou.mean(1).tolist())
                notes.append(f"{name} {label} IoU per image: {per_image}")
            lines.append(f"| {name} | {label} | {n} | | | {floor_l1.mean():.4f} | "
                         f"{floor_iou.mean():.3f} | {per_k} | | | | |")
            print(lines[-1], flush=True)
        strategies = INTERPRETERS[name].attack_strategies
        runs = [("pgd", None, "full")] + [
            ("adv2", strategy, support) for support in args.supports
            for strategy in ([s for s in args.mask_strategies if s in strategies]
                             if strategies else [None])]
        for attack_name, strategy, support in runs:
            cfg = pipeline.AttackConfig(interpreter=name, attack=attack_name, seed=args.seed,
                                        support=support)
            attacked = (build_interpreter(name, model, **settings, strategy=strategy)
                        if strategy else interpreter)
            attack = pipeline.build_attack(cfg, model, attacked)
            cat, seconds = run_batches(cfg, model, attacked, attack, samples, tgts,
                                       args.batch_size)
            assert cat["linf"].max() <= round(255 * cfg.eps)
            per_k = "/".join(f"{v:.2f}" for v in cat["iou"].mean(0).tolist())
            tags = [t for t in (strategy, None if support == "full" else f"{support} support")
                    if t]
            label = DISPLAY_NAMES[attack_name] + (f" ({', '.join(tags)})" if tags else "")
            lines.append(
                f"| {name} | {label} | {n} | "
                f"{cat['success'].mean():.3f} | {cat['confidence'].mean():.3f} | "
                f"{cat['l1'].mean():.4f} | {cat['iou'].mean():.3f} | {per_k} | {seconds:.2f} | "
                f"{cat['passes'].mean():.1f} | {cat['changed'].mean():.3f} | "
                f"{cat['l2'].mean():.2f} |")
            print(lines[-1], flush=True)
            if attack_name == "adv2" and support == "full":
                k = min(n, args.batch_size)
                attacked.use_seeds(seeds[:k])
                ratio = step_cost(model, attacked, x[:k], tgts[:k], benign[:k])
                ratios.append(f"| {name}{f' ({strategy})' if strategy else ''} | {ratio:.2f} |")
            if attack_name == "adv2" and (strategy or fitted or support != "full"
                                          or interpreter.stochastic):
                per_image = " ".join(f"{v:.2f}" for v in cat["iou"].mean(1).tolist())
                notes.append(f"{name} {label} IoU per image (min "
                             f"{cat['iou'].mean(1).min():.3f}): {per_image}")
            if attack_name == "adv2" and support != "full":
                notes.append(f"{name} {support} support, fraction of the pixels per image: "
                             f"{support_fractions(cat)}")
                notes.append(f"{name} {support} support, mean |map − target map| per image "
                             "in the map cells the support reaches / the cells it does not: "
                             f"{error_by_support(cat)}")
        if name == "grad":  # issue 22's unit costs of GRAD's attack step
            k = min(n, args.batch_size)
            unit_costs = grad_unit_costs(model, x[:k], tgts[:k], benign[:k], settings)
            print("\n".join(unit_costs), flush=True)

    report = [
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
        "A stochastic interpreter (SmoothGrad) attacks with each image's seed and is judged, "
        "as a defender who redraws would, under another seed the attack never saw: its "
        "ADV² and PGD rows compare the map of the adversarial image with the benign map, "
        "both drawn under that seed, and its 'another seed' floor compares the benign maps "
        "of the two seeds. Pixels changed: the fraction of pixels with any channel changed; "
        "‖δ‖₂ in [0,1] units. A "
        "support (`--support`, adv2.attacks.support) confines ADV² in every stage.",
        "",
        *lines,
        "",
        "Cost of one attack step relative to one PGD step (forward + backward), same batch:",
        "",
        "| interpreter | ADV² step / PGD step |",
        "|---|---|",
        *ratios,
        "",
        *([("GRAD unit costs in forward + backward units (CE w.r.t. the input), median process "
            "CPU time, interleaved, same run:"), "", *unit_costs, ""] if unit_costs else []),
        *(f"- {note}" for note in notes),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
