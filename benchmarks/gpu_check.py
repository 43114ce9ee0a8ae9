"""The GPU check: a tiny ``adv2 run`` (CAM and GRAD × PGD and ADV², transfer, detection, the
report) on ``--device``, whose outputs must exist and be finite; the GPU-marked tests; and PGD
and ADV² (CAM, GRAD: ``ADV2.for_interpreter`` without early stopping) timed at batch 32 on the
device against the CPU, on images of ../shared/data/imagenet-sample (synthetic ones when it is
absent), with the embedded EfficientNet-Lite0. Prints the page and writes it with --out; exits
1 when a check fails.

    python benchmarks/gpu_check.py --device cuda --out docs/gpu.md
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/gpu.md  # tiny, anywhere

``--smoke`` shrinks every part (a random ``timm:test_resnet`` at 32×32, two attacked images,
batch 4, two steps) so that the whole script runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
import yaml
from PIL import Image

from adv2.attacks import ADV2, PGD
from adv2.benchmarking import default_images, publish
from adv2.cli import main as adv2_main
from adv2.data import list_images, load_image, to_tensor
from adv2.experiment.tables import Table
from adv2.interpreters import build_interpreter
from adv2.models import Classifier, ModelError, check_device, describe_device, load_model
from adv2.provenance import versions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = default_images(__file__)
#: the tests that run only with CUDA (``tests/test_devices.py``'s ``cuda`` mark)
GPU_TESTS = "tests/test_devices.py -k gpu"
INTERPRETERS = ("cam", "grad")


class Sizes(NamedTuple):
    """How large each part is: the tiny run's attacked and benign images, their size and
    steps; the timed batch, its steps and ADV²'s warm-start steps."""

    images: int
    benign: int
    size: int
    run_steps: int
    batch: int
    steps: int
    warm_steps: int


FULL = Sizes(images=4, benign=6, size=224, run_steps=3, batch=32, steps=10, warm_steps=5)
SMOKE = Sizes(images=2, benign=4, size=32, run_steps=1, batch=4, steps=2, warm_steps=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a tiny model")
    parser.add_argument("--tests", default=GPU_TESTS,
                        help="pytest arguments of the GPU-marked tests, one quoted text (run "
                             "from the repository root)")
    parser.add_argument("--out", type=Path, help="write the page here (e.g. docs/gpu.md)")
    return parser


# ------------------------------------------------------------------------------ inputs
def files(folder: Path, n: int, offset: int = 0) -> list[Path]:
    """The folder's image files ``offset`` … ``offset + n`` in sorted order; none unless it
    holds them all."""
    found = list_images(folder)[offset:offset + n] if folder.is_dir() else []
    return found if len(found) == n else []


def synthetic(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth seeded random images (8×8 blocks of colour plus a little pixel noise).

    Shape:
        uint8 n×size×size×3.
    """
    rng = np.random.default_rng(seed)
    blocks = -(-size // 8)
    low = rng.random((n, blocks, blocks, 3))
    high = np.kron(low, np.ones((8, 8, 1)))[:, :size, :size]
    return (255 * (0.8 * high + 0.2 * rng.random((n, size, size, 3)))).round().astype(np.uint8)


def batch_images(folder: Path, n: int, size: int) -> np.ndarray:
    """``n`` images of the folder as ``adv2`` reads them, else synthetic ones (uint8
    n×size×size×3)."""
    found = files(folder, n)
    return np.stack([load_image(p, size) for p in found]) if found else synthetic(n, size, 0)


def stage_images(target: Path, folder: Path, n: int, size: int, offset: int) -> None:
    """Put ``n`` image files into ``target``: the folder's (copied as they are, so that their
    names give their labels), else synthetic PNGs."""
    target.mkdir(exist_ok=True)
    found = files(folder, n, offset)
    for path in found:
        shutil.copyfile(path, target / path.name)
    if not found:
        for i, image in enumerate(synthetic(n, size, offset)):
            Image.fromarray(image).save(target / f"synthetic_{offset + i}.png")


def tiny_weights(path: Path) -> None:
    """Random ``timm:test_resnet`` weights whose predictions are confident (zero-mean class
    weights at a large scale), for the smoke run."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        weight = net.get_classifier().weight
        weight.mul_(300.0).sub_(weight.mean(dim=1, keepdim=True))
    torch.save(net.state_dict(), path)


def model_spec(smoke: bool, root: Path) -> tuple[str, str | None]:
    """(model name, weights file) of the check: EfficientNet-Lite0, or a tiny timm model."""
    if not smoke:
        return "efficientnet_lite0", None
    weights = root / "tiny.pth"
    if not weights.is_file():
        tiny_weights(weights)
    return "timm:test_resnet", str(weights)


# ------------------------------------------------------------------------------ (a) adv2 run
def experiment(root: Path, args: argparse.Namespace, sizes: Sizes) -> Path:
    """Write a tiny experiment file (its images beside it) and return its path."""
    model, weights = model_spec(args.smoke, root)
    stage_images(root / "images", args.images, sizes.images, sizes.size, 0)
    stage_images(root / "benign", args.images, sizes.benign, sizes.size, sizes.images)
    steps = sizes.run_steps
    cfg = {"model": model, "weights": weights, "images": "images", "image_size": sizes.size,
           "device": args.device, "seed": 0, "interpreters": list(INTERPRETERS),
           "eps": "16/255", "attacks": {"pgd": {"steps": steps},
                                        "adv2": {"steps": steps, "warm_steps": steps}},
           "transfer": True,
           "detection": {"benign_images": "benign", "squeezers": ["bit-4", "median-2x2"],
                         "detectors": ["squeeze", "ensemble"]},
           "report": {"examples": 1}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def finite_csv(path: Path) -> bool:
    """Whether every numeric cell of a CSV table is finite (blank and text cells pass)."""
    with open(path, newline="") as fh:
        cells = [c for row in list(csv.reader(fh))[1:] for c in row]
    numbers = []
    for cell in cells:
        try:
            numbers.append(float(cell))
        except ValueError:
            continue
    return all(math.isfinite(v) for v in numbers)


def finite_records(folder: Path) -> bool:
    """Whether every float array of the records under ``folder`` is finite."""
    for path in folder.rglob("*.npz"):
        with np.load(path, allow_pickle=False) as npz:
            if any(npz[k].dtype.kind == "f" and not np.isfinite(npz[k]).all()
                   for k in npz.files):
                return False
    return True


def check_run(root: Path, args: argparse.Namespace, sizes: Sizes) -> Table:
    """Run ``adv2 run`` on the tiny experiment and check what it wrote."""
    out = root / "run"
    code = adv2_main(["run", str(experiment(root, args, sizes)), "--out", str(out),
                      "--no-progress"])
    table = Table("run", "adv2 run", ["output", "present", "finite"], ["", "", ""])
    table.rows.append(["exit code 0", "yes" if code == 0 else f"no ({code})", None])
    for name in ("attacks", "transfer_l1", "transfer_iou", "detection"):
        path = out / "report" / "tables" / f"{name}.csv"
        table.rows.append([f"report/tables/{name}.csv", _yes(path.is_file()),
                           _yes(path.is_file() and finite_csv(path))])
    for stage in ("transfer", "detection"):
        folder = out / "results" / stage
        present = folder.is_dir() and any(folder.rglob("*"))
        table.rows.append([f"results/{stage}/", _yes(present),
                           _yes(present and finite_records(folder))])
    return table


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


# ------------------------------------------------------------------------------ (b) tests
def run_tests(selection: str) -> tuple[int, str]:
    """pytest on ``selection`` (its arguments) from the repository root: (exit code, its
    summary line)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               *shlex.split(selection)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line.strip("= ") for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


# ------------------------------------------------------------------------------ (c) timing
def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attacks(model: Classifier, sizes: Sizes) -> dict[tuple[str, str], object]:
    """PGD and ADV² (the CLI's, never stopping early) against each interpreter, by
    (interpreter, attack)."""
    made = {}
    for name in INTERPRETERS:
        interpreter = build_interpreter(name, model)
        made[name, "PGD"] = PGD(model, interpreter, steps=sizes.steps)
        made[name, "ADV²"] = ADV2.for_interpreter(model, interpreter, steps=sizes.steps,
                                                  warm_steps=sizes.warm_steps, patience=0)
    return made


def time_attacks(device: str, args: argparse.Namespace, sizes: Sizes, root: Path
                 ) -> dict[tuple[str, str], tuple[float, float]]:
    """Wall seconds and passes per image of each attack on one batch on ``device`` (after a
    warm-up call of each)."""
    name, weights = model_spec(args.smoke, root)
    model = load_model(name, weights, device)
    x = to_tensor(batch_images(args.images, sizes.batch, sizes.size)).to(model.device)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, classes, (len(x),), generator=gen, device="cpu").to(x.device)
    timed = {}
    for key, attack in attacks(model, sizes).items():
        attack(x[:2], targets[:2])  # warm-up: kernels, allocator
        synchronise(model.device)
        start = time.perf_counter()
        result = attack(x, targets)
        synchronise(model.device)
        timed[key] = (time.perf_counter() - start, float(result.passes.float().mean()))
    return timed


def timing_table(device: str, args: argparse.Namespace, sizes: Sizes, root: Path) -> Table:
    """Each attack's seconds per batch on the CPU and on ``device`` (the same run when it is
    the CPU), and the speed-up."""
    cpu = time_attacks("cpu", args, sizes, root)
    other = cpu if torch.device(device).type == "cpu" else time_attacks(device, args, sizes, root)
    table = Table("timing", "timing", ["interpreter", "attack", "CPU s / batch",
                                       f"{device} s / batch", "speed-up", "passes / image"],
                  ["", "", ".2f", ".3f", ".1f", ".1f"], blank="", aligned=False)
    for (name, attack), (seconds, passes) in cpu.items():
        table.rows.append([name, attack, seconds, other[name, attack][0],
                           seconds / other[name, attack][0], passes])
    return table


# ------------------------------------------------------------------------------ the page
def cpu_name() -> str:
    """The host CPU's model name (Linux), else what the platform says."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    named = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return named[0] if named else platform.processor() or platform.machine()


def page(argv: list[str], args: argparse.Namespace, sizes: Sizes, run: Table,
         tests: tuple[int, str], timing: Table) -> str:
    found = versions() | {"CUDA": str(torch.version.cuda)}
    source = args.images if args.images.is_dir() else "synthetic images"
    model = "A random timm test_resnet" if args.smoke else "EfficientNet-Lite0"
    return "\n".join([
        "# GPU check", "",
        f"Command: `python benchmarks/gpu_check.py {' '.join(argv)}`", "",
        f"Device: {describe_device(args.device)}; host CPU: {cpu_name()} "
        f"({os.cpu_count()} threads, {torch.get_num_threads()} used by torch).", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in found.items()) + ".", "",
        "## A tiny `adv2 run`", "",
        f"{model}, {sizes.images} attacked and {sizes.benign} benign {sizes.size}×{sizes.size} "
        f"images, ε = 16/255, CAM and GRAD × PGD and ADV² (steps: {sizes.run_steps}), transfer, "
        f"detection (squeezing and the ensemble), the report; on {args.device}.", "",
        run.markdown(),
        "## GPU-marked tests", "",
        f"`python -m pytest -q -rs {args.tests}`: {tests[1]} (exit {tests[0]}).", "",
        f"## PGD and ADV² at batch {sizes.batch}", "",
        f"{model} on {sizes.batch} {sizes.size}×{sizes.size} images of {source}, seeded "
        f"random targets, ε = 8/255; PGD {sizes.steps} steps; ADV² as `adv2 attack` runs it "
        f"with {sizes.warm_steps} warm-start and {sizes.steps} joint steps, no early stop. "
        "Wall seconds of one call after a warm-up call; passes per image on the CPU.", "",
        timing.markdown()])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except ModelError as exc:
        parser.error(f"--device: {exc}")
    sizes = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="adv2-gpu-check-") as tmp:
        root = Path(tmp)
        run = check_run(root, args, sizes)
        tests = run_tests(args.tests)
        timing = timing_table(args.device, args, sizes, root)
    publish(page(argv, args, sizes, run, tests, timing), args.out)
    failed = any(cell == "NO" or str(cell).startswith("no") for row in run.rows for cell in row)
    # on an accelerator the GPU-marked tests must run, not skip
    untested = torch.device(args.device).type != "cpu" and "passed" not in tests[1]
    return 1 if failed or tests[0] != 0 or untested else 0


if __name__ == "__main__":
    sys.exit(main())
