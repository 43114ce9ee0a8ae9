"""Images and labels.

Every image becomes the uint8 224×224 RGB picture that is attacked (Resize(256) +
CenterCrop(224) by default); :func:`to_tensor` turns a batch of them into float [0,1] N×3×H×W.
Unreadable files (corrupt, truncated, decompression bombs, broken or looping links) are reported
by name and skipped, never fatal.

A sample's ``name`` is its path relative to the folder given (``sub/cat.png``): unique by
construction, it names its row, record and sample folder. Its ``key`` (the relative path without
its extension, ``/`` written ``__``) seeds its random choices, so that adding or removing other
files changes nothing of it; its ``digest`` binds recorded results to the picture itself.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

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
        found = [i for i, n in enumerate(lowered) if n == key]
        if len(found) > 1:
            raise ValueError(f"class name {label!r} names classes {' and '.join(map(str, found))}"
                             f" ({', '.join(self.synsets[i] for i in found)}): give the index "
                             "or the synset")
        if found:
            return found[0]
        raise ValueError(f"unknown class label {label!r}")


@lru_cache(maxsize=1)
def imagenet_classes() -> ClassTable:
    """The 1000 ImageNet classes shipped with adv2 (``resources/imagenet_classes.tsv``)."""
    text = resources.files("adv2.resources").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.strip().splitlines()[1:]]
    return ClassTable(tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def image_digest(image: np.ndarray) -> str:
    """SHA-256 (hex, first 32 digits) of a uint8 image's shape and pixels."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:32]


def sample_key(name: str) -> str:
    """The seed key of a sample name: ``/`` written ``__``, without the extension."""
    return name.replace("/", "__").rsplit(".", 1)[0]


@dataclass
class Sample:
    """One image ready to attack: ``image`` is uint8 H×W×3; ``label`` is None when unknown;
    ``name`` its path relative to the folder it was read from (see the module docstring)."""

    name: str
    path: Path | None
    image: np.ndarray
    label: int | None
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = image_digest(self.image)

    @property
    def key(self) -> str:
        return sample_key(self.name)


def load_image(path: str | Path, size: int = 224, resize: int | None = 256) -> np.ndarray:
    """Read any PIL-readable image as uint8 ``size``×``size``×3 RGB.

    Grayscale (8 or 16 bit), RGBA (composited on white), palette and CMYK images are
    converted. The shorter
    side is resized to ``resize`` (bilinear, antialiased) then centre-cropped to ``size``;
    ``resize=None`` resizes straight to ``size`` before cropping. Pillow refuses images of more
    than ``Image.MAX_IMAGE_PIXELS``·2 pixels (decompression bombs) with an error.
    """
    return _read_image(path, size, resize)[0]


def _read_image(path: str | Path, size: int, resize: int | None
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` and the original (width, height)."""
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
        original = im.size
        w, h = original
        scale = short / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.Resampling.BILINEAR, reducing_gap=None)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).copy(), original


def to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 (N×)H×W×3 → float32 N×3×H×W in [0,1]."""
    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round [0,1] images to the nearest uint8 level (values stay float in [0,1])."""
    return (x.clamp(0, 1) * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float N×3×H×W in [0,1] → uint8 N×H×W×3 (rounded)."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _label_from_name(path: Path, classes: ClassTable) -> int | None:
    synset = path.name.split("_", 1)[0]
    return classes.synsets.index(synset) if synset in classes.synsets else None


def _csv_key(file: str | Path) -> str:
    """How a labels file's path and an image are matched: a relative path normalised
    (``./a//b.png`` is ``a/b.png``), an absolute one resolved (links followed)."""
    text = str(file)
    return os.path.realpath(text) if os.path.isabs(text) else Path(
        os.path.normpath(text)).as_posix()


def _read_label_csv(path: Path, classes: ClassTable) -> dict[str, int]:
    """``path,label`` rows; a first row ``path,label`` is the header, a file listed twice is an
    error naming both lines."""
    labels: dict[str, int] = {}
    where: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the labels file ({exc})") from exc
    for lineno, row in enumerate(rows, start=1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'path,label', got {row!r}")
        file, label = row[0].strip(), row[1].strip()
        if lineno == 1 and (file.lower(), label.lower()) == ("path", "label"):
            continue
        file = _csv_key(file)
        if file in where:
            raise ValueError(f"{path}:{lineno}: {file!r} is listed twice (lines {where[file]} "
                             f"and {lineno})")
        try:
            labels[file] = classes.index(label)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from exc
        where[file] = lineno
    return labels


@dataclass
class Listing:
    """The image files under a root, sorted, and the files passed over with the reason."""

    files: list[Path]
    skipped: list[tuple[str, str]]


def scan_images(root: str | Path) -> Listing:
    """A file, or every image file under a folder (recursively, following links to folders
    once each), sorted by path. Files without an image suffix, broken or looping links and
    folders reached twice are listed in ``skipped`` with the reason."""
    root = Path(root)
    if root.is_file():
        return Listing([root], [])
    if not root.is_dir():
        raise FileNotFoundError(f"image path {root} does not exist")
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        here = Path(folder)
        real = os.path.realpath(here)
        if real in seen:
            skipped.append((str(here), f"folder already listed as {seen[real]} (a link loop "
                                       "or a second link to it): skipped"))
            dirs.clear()
            continue
        seen[real] = here
        dirs.sort()  # the walk's order, and so which of two links to a folder is kept
        for name in names:
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((str(path), f"not an image file (suffix {path.suffix or 'none'!r})"))
            elif not path.is_file():
                skipped.append((str(path), "a broken or looping link"))
            else:
                files.append(path)
    return Listing(sorted(files), sorted(skipped))


def list_images(root: str | Path) -> list[Path]:
    """The image files of :func:`scan_images`."""
    return scan_images(root).files


@dataclass
class Dataset:
    """Loaded samples; ``errors``: (file, message) of image files that could not be used;
    ``ignored``: (file, reason) of the other files passed over; ``warnings``: (file, message)
    of loaded images worth a look (upscaled from under half the crop size)."""

    samples: list[Sample]
    errors: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    warnings: list[tuple[str, str]]


def load_dataset(
    root: str | Path,
    labels_csv: str | Path | None = None,
    limit: int | None = None,
    size: int = 224,
) -> Dataset:
    """Load images and their labels.

    Labels come from, in order: the CSV (``path,label`` with path relative to ``root`` or
    absolute, label an index, synset or name), an ImageNet-style file name
    ``<synset>_*.JPEG``, or a class subfolder named by synset, class name or index. An image that
    cannot be read (any decoder error, a decompression bomb, a link to nowhere) is logged,
    recorded in ``errors`` and skipped; the others load.
    """
    root = Path(root)
    classes = imagenet_classes()
    csv_labels = _read_label_csv(Path(labels_csv), classes) if labels_csv else {}
    listing = scan_images(root)
    data = Dataset([], [], [], [])
    base = root if root.is_dir() else root.parent

    def name(path: Path) -> str:  # a file's name in the results: its path in the folder
        return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
    for file, reason in listing.skipped:
        if reason.startswith("not an image"):
            log.debug("passing over %s: %s", file, reason)
            data.ignored.append((name(Path(file)), reason))
        else:
            log.error("skipping %s: %s", file, reason)
            data.errors.append((name(Path(file)), reason))
    for path in listing.files:
        if limit is not None and len(data.samples) >= limit:
            break
        rel = name(path)
        label = csv_labels.get(rel)
        if label is None:
            label = csv_labels.get(_csv_key(path.resolve()))
        if label is None:
            label = _label_from_name(path, classes)
        if label is None and path.parent != base:
            try:  # a class folder: its synset, class name or index
                label = classes.index(path.parent.name)
            except ValueError:
                label = None
        try:
            image, (w, h) = _read_image(path, size, 256)
        except Exception as exc:  # noqa: BLE001 - any decoder failure skips this file only
            msg = f"cannot read image ({type(exc).__name__}: {exc})"
            log.error("skipping %s: %s", path, msg)
            data.errors.append((rel, msg))
            continue
        if 2 * min(w, h) < size:
            msg = f"only {w}×{h} pixels: upscaled to {size}×{size}"
            log.warning("%s is %s", path, msg)
            data.warnings.append((rel, msg))
        data.samples.append(Sample(rel, path, image, label))
    if csv_labels:
        used = {s.name for s in data.samples} | {_csv_key(s.path.resolve()) for s in data.samples}
        unused = sorted(set(csv_labels) - used)
        if unused and limit is None:
            log.warning("%s: %d listed files are not among the images (e.g. %s)", labels_csv,
                        len(unused), unused[0])
    return data


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
