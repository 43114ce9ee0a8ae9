"""Images and labels.

Every image becomes the uint8 224×224 RGB picture that is attacked (Resize(256) +
CenterCrop(224) by default); :func:`to_tensor` turns a batch of them into float [0,1] N×3×H×W.
Unreadable files are reported by name and skipped, never fatal.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ClassTable:
    """The ImageNet-1k classes: index ↔ synset ↔ name."""

    synsets: tuple[str, ...]
    names: tuple[str, ...]

    def index(self, label: str) -> int:
        """Resolve an index (``"207"``), synset (``"n02099601"``) or class name."""
        label = label.strip()
        if label.isdigit() and int(label) < len(self.synsets):
            return int(label)
        if label in self.synsets:
            return self.synsets.index(label)
        lowered = [n.lower().replace("_", " ") for n in self.names]
        key = label.lower().replace("_", " ")
        if key in lowered:
            return lowered.index(key)
        raise ValueError(f"unknown class label {label!r}")


@lru_cache(maxsize=1)
def imagenet_classes() -> ClassTable:
    """The 1000 ImageNet classes shipped with adv2 (``resources/imagenet_classes.tsv``)."""
    text = resources.files("adv2.resources").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.strip().splitlines()[1:]]
    return ClassTable(tuple(r[1] for r in rows), tuple(r[2] for r in rows))


@dataclass
class Sample:
    """One image ready to attack: ``image`` is uint8 H×W×3; ``label`` is None when unknown."""

    name: str
    path: Path | None
    image: np.ndarray
    label: int | None


def load_image(path: str | Path, size: int = 224, resize: int | None = 256) -> np.ndarray:
    """Read any PIL-readable image as uint8 ``size``×``size``×3 RGB.

    Grayscale (8 or 16 bit), RGBA (composited on white), palette and CMYK images are
    converted. The shorter
    side is resized to ``resize`` (bilinear, antialiased) then centre-cropped to ``size``;
    ``resize=None`` resizes straight to ``size`` before cropping.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):  # 16-bit grayscale: scale to 8 bits instead of clipping
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().clip(0, 255)
                                 .astype(np.uint8))
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        short = resize or size
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.Resampling.BILINEAR, reducing_gap=None)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).copy()


def to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 (N×)H×W×3 → float32 N×3×H×W in [0,1]."""
    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float N×3×H×W in [0,1] → uint8 N×H×W×3 (rounded)."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _label_from_name(path: Path, classes: ClassTable) -> int | None:
    synset = path.name.split("_", 1)[0]
    return classes.synsets.index(synset) if synset in classes.synsets else None


def _read_label_csv(path: Path, classes: ClassTable) -> dict[str, int]:
    labels: dict[str, int] = {}
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'path,label', got {row!r}")
            try:
                labels[row[0].strip()] = classes.index(row[1])
            except ValueError as exc:
                if lineno == 1:  # a header row
                    continue
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return labels


def list_images(root: str | Path) -> list[Path]:
    """A file, or every image file under a folder (recursively), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"image path {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_dataset(
    root: str | Path,
    labels_csv: str | Path | None = None,
    limit: int | None = None,
    size: int = 224,
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Load images and their labels.

    Labels come from, in order: the CSV (``path,label`` with path relative to ``root`` or
    absolute, label an index, synset or name), an ImageNet-style file name
    ``<synset>_*.JPEG``, or a class subfolder named by synset or class name.

    Returns the samples and a list of ``(file, error)`` for the files that were skipped.
    """
    root = Path(root)
    classes = imagenet_classes()
    csv_labels = _read_label_csv(Path(labels_csv), classes) if labels_csv else {}
    samples: list[Sample] = []
    errors: list[tuple[str, str]] = []
    base = root if root.is_dir() else root.parent
    for path in list_images(root):
        if limit is not None and len(samples) >= limit:
            break
        rel = str(path.relative_to(base))
        label = csv_labels.get(rel, csv_labels.get(str(path)))
        if label is None:
            label = _label_from_name(path, classes)
        if label is None and path.parent != base:
            try:
                label = classes.index(path.parent.name)
            except ValueError:
                label = None
        try:
            image = load_image(path, size)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            log.error("skipping %s: cannot read image (%s)", path, msg)
            errors.append((str(path), msg))
            continue
        samples.append(Sample(rel.replace("/", "__").rsplit(".", 1)[0], path, image, label))
    return samples, errors


def demo_images(size: int = 224) -> list[Sample]:
    """Natural images that ship with installed packages (no download): scikit-image and
    matplotlib samples. Labels are None (the model's prediction is used)."""
    candidates: list[tuple[str, Path]] = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        for stem in ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "astronaut.png"):
            candidates.append((stem.rsplit(".", 1)[0], data / stem))
    except ImportError:
        pass
    try:
        import matplotlib

        sample_data = Path(matplotlib.get_data_path()) / "sample_data"
        candidates.append(("grace_hopper", sample_data / "grace_hopper.jpg"))
    except ImportError:
        pass
    samples = []
    for name, path in candidates:
        if path.is_file():
            samples.append(Sample(name, path, load_image(path, size), None))
    return samples
