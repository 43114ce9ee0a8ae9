"""Figures: grids of images and maps, shared by ``adv2 attack``, ``adv2 run`` and the demo, and
the demo's figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from adv2.data import imagenet_classes  # noqa: E402


def class_name(index: int) -> str:
    """The ImageNet class name of ``index`` (the index itself outside the table)."""
    names = imagenet_classes().names
    return names[index] if 0 <= index < len(names) else str(index)


Panel = tuple[str, np.ndarray]


def panel_grid(path: Path, rows: list[list[Panel]], title: str | None = None,
               dpi: int = 80) -> None:
    """Save a grid of titled panels: uint8 H×W×3 images as they are, h×w maps in [0,1] on one
    shared colour scale (0..1, nearest-neighbour cells)."""
    width = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(2.3 * width, 2.5 * len(rows) + 0.4),
                             squeeze=False)
    for ax_row, panels in zip(axes, rows):
        for ax, (name, img) in zip(ax_row, panels):
            if img.ndim == 3:
                ax.imshow(img)
            else:
                ax.imshow(img, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(name, fontsize=8)
        for ax in ax_row:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def figure(path: Path, clean: np.ndarray, adv: np.ndarray, maps: dict[str, np.ndarray],
           title: str) -> None:
    """Clean image, adversarial image and each named map, in one row."""
    panel_grid(path, [[("clean", clean), ("adversarial", adv), *maps.items()]], title)


def demo_figure(out: Path, names: list[str]) -> None:
    """``out/demo.png``: one row per image attacked in both ``out/pgd`` and ``out/adv2`` (the
    output folders of ``adv2 demo``): clean (titled with its name), PGD image, ADV² image, benign
    map, PGD map, ADV² map.
    """
    rows = []
    for name in names:
        pgd, adv = out / "pgd" / "samples" / name, out / "adv2" / "samples" / name
        if not (pgd.is_dir() and adv.is_dir()):
            continue
        rows.append([
            (f"clean: {name}", np.asarray(Image.open(pgd / "clean.png"))),
            ("PGD image", np.asarray(Image.open(pgd / "adv.png"))),
            ("ADV² image", np.asarray(Image.open(adv / "adv.png"))),
            ("benign CAM", np.load(adv / "benign_map.npy")),
            ("PGD CAM", np.load(pgd / "adv_map.npy")),
            ("ADV² CAM", np.load(adv / "adv_map.npy")),
        ])
    panel_grid(out / "demo.png", rows, dpi=70)
