"""The report's figures: IoU against k, L1 bars and the example grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from adv2.attacks import DISPLAY_NAMES  # noqa: E402
from adv2.experiment.config import ExperimentConfig  # noqa: E402
from adv2.experiment.images import ImageSet  # noqa: E402
from adv2.experiment.report.attack_tables import KS  # noqa: E402
from adv2.figures import panel_grid  # noqa: E402
from adv2.interpreters.plugins import label  # noqa: E402
from adv2.records import Store  # noqa: E402


def iou_figure(path: Path, cfg: ExperimentConfig, summary: dict) -> None:
    """IoU against k, PGD vs ADV², one panel per interpreter."""
    fig, axes = plt.subplots(1, len(cfg.interpreters), figsize=(3.2 * len(cfg.interpreters), 3),
                             squeeze=False)
    for ax, interpreter in zip(axes[0], cfg.interpreters):
        for attack in cfg.attacks_for(interpreter):
            per_k = summary[interpreter][attack]["iou_per_k"]
            if per_k:
                ax.plot([100 * k for k in KS], list(per_k.values()), marker="o",
                        label=DISPLAY_NAMES[attack])
        ax.set(title=label(interpreter), xlabel="k (%)", ylabel="IoU", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def l1_figure(path: Path, cfg: ExperimentConfig, summary: dict) -> None:
    """Mean L1 to the target map per interpreter, PGD vs ADV² bars."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(cfg.interpreters), 3))
    width = 0.8 / len(cfg.attacks)
    for j, attack in enumerate(cfg.attacks):
        values = [(summary[i][attack]["l1_mean"] or 0.0) if attack in summary[i]
                  else np.nan for i in cfg.interpreters]  # no bar where ADV² skips one
        ax.bar(np.arange(len(cfg.interpreters)) + j * width, values, width,
               label=DISPLAY_NAMES[attack])
    ax.set_xticks(np.arange(len(cfg.interpreters)) + width * (len(cfg.attacks) - 1) / 2,
                  [label(i) for i in cfg.interpreters])
    ax.set(ylabel="L1 to the target map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def example_names(cfg: ExperimentConfig, store: Store, data: ImageSet) -> list[str]:
    """The first ``report.examples`` images with every attack's result."""
    out = []
    for name in data.attacked:
        if len(out) == cfg.report.examples:
            break
        records = [store.load(f"{i}/{a}", name) for i in cfg.interpreters
                   for a in cfg.attacks_for(i)]
        if all(r is not None and r.error is None for r in records):
            out.append(name)
    return out


def examples_figure(path: Path, cfg: ExperimentConfig, store: Store, data: ImageSet,
                    names: list[str]) -> None:
    """Per image: the image, then per interpreter its benign, PGD and ADV² maps."""
    rows = []
    for name in names:
        row = [(name[:24], data.images[data.index([name])[0]])]
        for interpreter in cfg.interpreters:
            attacks = cfg.attacks_for(interpreter)
            first = store.load(f"{interpreter}/{attacks[0]}", name)
            row.append((f"{label(interpreter)} benign", first.arrays["benign"]))
            for attack in attacks:
                rec = store.load(f"{interpreter}/{attack}", name)
                row.append((f"{label(interpreter)} {DISPLAY_NAMES[attack]}", rec.arrays["map"]))
        rows.append(row)
    panel_grid(path, rows, dpi=60)
