"""How well the RTS masks explain the classifier, against a centred box of the same area.

For each image the checkpoint was not trained on (it lists its training images) that the model
classifies correctly, with m the RTS map of the true class y, bilinearly upsampled to the image:

- keep:   p(y | m·x + (1−m)·blur(x))   — only the mask region kept, the rest blurred (σ = 11);
- remove: p(y | (1−m)·x + m·blur(x))   — the mask region blurred away;
- area:   mean(m).

The baseline is a centred square of the same area (hard 0/1). A good mask keeps more of the class
probability and removes more of it than the box. Prints Markdown (and writes it with --out):

    python benchmarks/rts_quality.py --out docs/benchmarks/rts-quality.md
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adv2.benchmarking import default_images, images_missing, publish, stacked
from adv2.data import load_dataset
from adv2.experiment.tables import Table
from adv2.filters import blur
from adv2.interpreters import RTS
from adv2.interpreters.rts import SHIPPED_FILES
from adv2.models import describe_device, load_model
from adv2.rts import SaliencyNet

DEFAULT_IMAGES = default_images(__file__)
COLUMNS = ["checkpoint: mask", "area", "p(y), only the mask kept ↑", "p(y), mask removed ↓",
           "centred box of the same area: kept ↑", "box removed ↓",
           "mask beats box per image: kept / removed"]


def centred_boxes(areas: torch.Tensor, size: int) -> torch.Tensor:
    """N×1×size×size hard masks: centred squares covering ``areas`` (N,) of the image."""
    side = (areas.sqrt() * size).round().clamp(1, size).long()
    out = torch.zeros(len(areas), 1, size, size, device=areas.device)
    for i, s in enumerate(side.tolist()):
        lo = (size - s) // 2
        out[i, :, lo:lo + s, lo:lo + s] = 1.0
    return out


def binarise(maps: torch.Tensor) -> torch.Tensor:
    """Hard N×1×h×w masks: each map's top ⌈a·P⌉ cells set to 1, a its mean value."""
    flat = maps.flatten(1)
    out = torch.zeros_like(flat)
    for i, row in enumerate(flat):
        count = max(1, math.ceil(float(row.mean()) * row.numel()))
        out[i, row.topk(count).indices] = 1.0
    return out.view_as(maps)


def table_row(kind: str, r: np.ndarray) -> list:
    """One row of the table from per-image [area, keep, remove, box keep, box remove] rows."""
    area, rk, rr, bk, br = r.T
    kept, removed = (rk > bk).sum(), (rr < br).sum()
    return [kind, area.mean(), rk.mean(), rr.mean(), bk.mean(), br.mean(),
            f"{100 * kept / len(r):.1f}% ({kept}) / {100 * removed / len(r):.1f}% ({removed})"]


def removal_losses(r: np.ndarray, small: float = 0.05) -> str:
    """How many images the mask does not remove more of p(y) than the box on, and of those how
    many leave less than ``small`` of p(y) either way (both removals destroy the class)."""
    _, _, rr, _, br = r.T
    lost = rr >= br
    both = lost & (np.maximum(rr, br) < small)
    return (f"the mask does not remove more than the box on {lost.sum()} of {len(r)} images; on "
            f"{both.sum()} of them both leave p(y) < {small:g}")


def probabilities(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor,
                  sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """p(y) with only the mask kept and with the mask removed (the rest/region blurred)."""
    blurred = blur(x, sigma)
    keep = masks * x + (1 - masks) * blurred
    remove = (1 - masks) * x + masks * blurred
    with torch.no_grad():
        p_keep = model(keep).softmax(dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        p_remove = model(remove).softmax(dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    return p_keep, p_remove


def evaluate(model, rts: RTS, samples: list, batch_size: int, sigma: float
             ) -> tuple[dict[str, list[list[float]]], list[float]]:
    """Per-image [area, keep, remove, box keep, box remove] rows of each mask kind, and p(y) of
    the correctly classified clean images (only those are scored)."""
    untrained = SaliencyNet(model, None if rts.net.shared else rts.net.encoder).eval()
    if not rts.net.shared:  # the trained selector, the untrained (zero) decoder head
        untrained.load_state_dict(rts.net.state_dict())
        torch.nn.init.zeros_(untrained.head.weight)
        torch.nn.init.zeros_(untrained.head.bias)
    kinds = ("RTS mask sigmoid(z) (what the saliency loss trains)",
             f"RTS map sigmoid(z / {rts.temperature:g}) (what adv2 attacks)",
             "RTS mask binarised (top cells, same area)",
             "RTS mask region m > 1/2 (hard)",
             "the selector's gate alone (decoder head zeroed)")
    rows: dict[str, list[list[float]]] = {k: [] for k in kinds}
    clean: list[float] = []
    for lo in range(0, len(samples), batch_size):
        part = samples[lo:lo + batch_size]
        x, y = stacked(model, part)
        with torch.no_grad():
            logits, z = rts.net.mask_logits(x, y)
            gate = torch.sigmoid(untrained.mask_logits(x, y)[1])
        mask = torch.sigmoid(z)
        ok = (logits.argmax(dim=1) == y).tolist()
        clean += [p for p, good in zip(logits.softmax(dim=1).gather(1, y.view(-1, 1)).tolist(),
                                       ok) if good]
        for kind, small, mode in ((kinds[0], mask, "bilinear"),
                                  (kinds[1], torch.sigmoid(z / rts.temperature), "bilinear"),
                                  (kinds[2], binarise(mask), "nearest"),
                                  (kinds[3], (mask > 0.5).to(mask), "nearest"),
                                  (kinds[4], gate, "bilinear")):
            masks = F.interpolate(small, size=x.shape[-2:], mode=mode,
                                  **({"align_corners": False} if mode == "bilinear" else {}))
            areas = masks.mean(dim=(1, 2, 3))
            rk, rr = probabilities(model, x, masks, y, sigma)
            bk, br = probabilities(model, x, centred_boxes(areas, x.shape[-1]), y, sigma)
            rows[kind] += [r for r, good in zip(torch.stack([areas, rk, rr, bk, br], 1).tolist(),
                                                ok) if good]
    return rows, clean


def describe(rts: RTS) -> str:
    """How the checkpoint was made, from its metadata."""
    meta = rts.net.meta
    train = meta.get("train", {})
    design = ("the shared design: the classifier is the encoder and its head the selector"
              if rts.net.shared else
              f"encoder {meta.get('encoder')} (frozen), selector trained "
              f"{train.get('selector_steps')} steps of {train.get('selector_batch_size')}")
    minutes = meta.get("seconds", meta.get("seconds_this_run", 0)) / 60
    text = (f"`{rts.checkpoint.name}`: {design}; decoder trained {train.get('steps')} steps of "
            f"{train.get('batch_size')} on {meta.get('n_train')} images, seed "
            f"{meta.get('seed')}, {minutes:.0f} min, with `{meta.get('command')}`")
    start = meta.get("init_meta")
    if start:  # a fine-tuning: say what it started from
        first = start.get("train", {})
        text += (f", starting from `{meta['init']['file']}` (selector "
                 f"{first.get('selector_steps')} steps of {first.get('selector_batch_size')}, "
                 f"decoder {first.get('steps')} steps of {first.get('batch_size')}, "
                 f"{start.get('seconds', 0) / 60:.0f} min, with `{start.get('command')}`)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--checkpoints", nargs="+", default=list(SHIPPED_FILES),
                        help="RTS checkpoints, paths or shipped names (default: the shipped ones)")
    parser.add_argument("--sigma", type=float, default=11.0, help="blur of removed regions")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu",
                        help="the torch device everything runs on (e.g. cuda)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if images_missing(args.images, "the report"):
        return 1
    torch.set_num_threads(args.threads)
    started = time.time()
    model = load_model(device=args.device)
    everything = load_dataset(args.images).samples
    table = Table("rts-quality", "RTS mask quality", COLUMNS,
                  ["", *[".3f"] * 5, ""], aligned=False)
    made = []
    for checkpoint in args.checkpoints:
        rts = RTS(model, checkpoint)
        samples = [s for s in everything if s.key not in rts.fitted_on]
        if not rts.fitted_on or not samples:
            print(f"{checkpoint}: lists no training images, or was trained on all of "
                  f"{args.images}", file=sys.stderr)
            return 1
        rows, clean = evaluate(model, rts, samples, args.batch_size, args.sigma)
        made.append(f"- {describe(rts)}. Unseen images: {len(samples)}, of which the model "
                    f"classifies {len(clean)} correctly (scored); their clean p(y) "
                    f"{np.mean(clean):.3f}.")
        table.rows += [table_row(f"{rts.checkpoint.name}: {kind}", np.array(r))
                       for kind, r in rows.items()]
        trained = next(iter(rows))
        made.append(f"  - {trained.split(' (')[0]}: {removal_losses(np.array(rows[trained]))}.")
    lines = [
        "# RTS mask quality on images the checkpoints never saw, against a centred box",
        "",
        "Command: `python benchmarks/rts_quality.py"
        + (f" --checkpoints {' '.join(args.checkpoints)}"
           if args.checkpoints != list(SHIPPED_FILES) else "")
        + (f" --device {args.device}" if args.device != "cpu" else "") + "`",
        "",
        "Each checkpoint is scored on the images of the folder it was not trained on (it lists "
        "its training images), those the model classifies correctly. Masks are of the true "
        "class, bilinearly upsampled; removed or outside regions are blurred (σ = "
        f"{args.sigma:g}); the box is a centred square of the same area. A good mask keeps more "
        "of p(y) than the box when only it is kept, and leaves less when it is removed; the "
        "last column counts the images where it does (percent, and the number of images).",
        "",
        *made,
        "",
        "The two designs (`adv2.rts.network`): the default is the paper's, an encoder of its own "
        "whose class embeddings gate its last feature map, trained in two phases (the selector, "
        "then the decoder against the classifier as a black box); the shared design uses the "
        "classifier as the encoder and its head as the selector, so its untrained network "
        "already returns a thresholded class activation map (its last row) and fooling the "
        "classifier moves its selector too. Both decoders add the gate's logit to the mask's "
        "(the head starts at zero), which short CPU trainings need to avoid empty or full masks; "
        "the original's schedule was 8500 selector steps of 128 and 3000 decoder steps of 64 "
        "ImageNet images.",
        "",
        f"Machine: {platform.machine()}, {args.threads} torch thread(s), "
        f"{describe_device(args.device)}; {time.time() - started:.0f} s.",
        "",
        table.markdown(),
    ]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
