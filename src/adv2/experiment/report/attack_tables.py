"""The report's tables of the attacks' records: resolved settings, attacks, transfer, errors,
and ``results.csv``."""

from __future__ import annotations

import csv
import io

import numpy as np

from adv2 import metrics
from adv2.attacks import DISPLAY_NAMES
from adv2.experiment import detection, transfer
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.experiment.report.stats import finished, stats
from adv2.experiment.tables import Table
from adv2.records import Store

KS = metrics.DEFAULT_KS


def _skipped(cfg: ExperimentConfig, consequence: str) -> str:
    """A sentence naming the interpreters ADV² skips (not differentiable) and ``consequence``
    for the table it ends; empty when it skips none."""
    names = cfg.adv2_skipped()
    return f" ADV² skips {', '.join(names)} (not differentiable){consequence}." if names else ""


def settings_table(cfg: ExperimentConfig) -> Table:
    """The resolved settings of every interpreter × attack (defaults filled in)."""
    keys = ["steps", "warm_steps", "lam", "optimizer", "lr", "lr_decay", "pred_loss",
            "map_loss", "patience"]
    table = Table("settings", "Attack settings", ["interpreter", "attack", "eps", *keys],
                  [""] * (3 + len(keys)),
                  note="PGD has no warm start, λ, step decay, map loss or early stop (–).")
    for interpreter in cfg.interpreters:
        for attack in cfg.attacks_for(interpreter):
            a = cfg.attack_config(interpreter, attack, cfg.seed)
            values = [getattr(a, k) for k in keys]
            if attack == "pgd":
                values = [None if k in ("warm_steps", "lam", "lr_decay", "map_loss", "patience")
                          else v for k, v in zip(keys, values)]
            table.rows.append([interpreter, DISPLAY_NAMES[attack], f"{a.eps:.5f}",
                               *[None if v is None else (f"{v:.4g}" if isinstance(v, float)
                                                         else str(v)) for v in values]])
    return table


def attacks_table(cfg: ExperimentConfig, store: Store, names: list[str]) -> tuple[Table, dict]:
    ks = [f"IoU@{k:.0%}" for k in KS]
    table = Table("attacks", "Attack success, confidence, L1 and IoU to the target maps",
                  ["interpreter", "attack", "images", "success", "confidence", "L1", *ks,
                   "IoU mean", "passes/image", "errors"],
                  ["", "", "d", ".3f", ".3f", ".4f", *[".3f"] * len(ks), ".3f", ".1f", "d"],
                  note="Means over the attacked images; success = the target class is predicted "
                       "on the uint8 image; confidence = its softmax probability; L1 and IoU "
                       "compare the true interpreter's map of the adversarial image (target "
                       "class) with the target map at the interpreter's resolution; IoU of the "
                       "top-k% cells for each k and their mean." + _skipped(cfg, ""))
    summary: dict = {}
    for interpreter in cfg.interpreters:
        for attack in cfg.attacks_for(interpreter):
            s = stats(store.records(f"{interpreter}/{attack}", names))
            table.rows.append([interpreter, DISPLAY_NAMES[attack], s.n, s.success, s.confidence,
                               s.l1, *(s.iou_k or [None] * len(KS)), s.iou, s.passes, s.errors])
            summary.setdefault(interpreter, {})[attack] = {
                "images": s.n, "success_rate": s.success, "mean_confidence": s.confidence,
                "l1_mean": s.l1, "iou_mean": s.iou, "errors": s.errors,
                "iou_per_k": dict(zip([f"{k:g}" for k in KS], s.iou_k)) if s.iou_k else None,
                "passes_per_image": s.passes}
    return table, summary


def transfer_tables(cfg: ExperimentConfig, store: Store,
                    names: list[str]) -> tuple[list[Table], dict]:
    columns = ["ADV² against ↓ / explained by →", *cfg.interpreters]
    note = ("Each row's ADV² images, explained by each column's interpreter for the target class "
            "and compared with that interpreter's benign maps; the diagonal is the attack's own "
            "result. Means over the attacked images."
            + _skipped(cfg, ": no row, only a column"))
    l1 = Table("transfer_l1", "Transferability: L1 to the benign maps", columns,
               ["", *[".4f"] * len(cfg.interpreters)], note=note)
    iou = Table("transfer_iou", "Transferability: IoU (mean over k) to the benign maps", columns,
                ["", *[".3f"] * len(cfg.interpreters)], note=note)
    summary: dict = {}
    for source in cfg.adv2_interpreters():
        row_l1, row_iou = [source], [source]
        for target in cfg.interpreters:
            ok = finished(store.records(transfer.stage(source, target), names))
            m_l1 = float(np.mean([r.meta["l1"] for r in ok])) if ok else None
            m_iou = float(np.mean([r.meta["iou"] for r in ok])) if ok else None
            row_l1.append(m_l1)
            row_iou.append(m_iou)
            summary.setdefault(source, {})[target] = {"l1": m_l1, "iou": m_iou, "images": len(ok)}
        l1.rows.append(row_l1)
        iou.rows.append(row_iou)
    return [l1, iou], summary


def errors_table(cfg: ExperimentConfig, store: Store, data: ImageSet) -> Table:
    table = Table("errors", "Images not attacked and units that failed",
                  ["stage", "image", "error"], ["", "", ""])
    for item in data.load_errors:
        table.rows.append(["load", item[0], item[1]])
    for name, why in data.skipped.items():
        table.rows.append(["targets", name, why])
    stages = [f"{i}/{a}" for i in cfg.interpreters for a in cfg.attacks_for(i)]
    if cfg.transfer:
        stages += [transfer.stage(s, t) for s in cfg.adv2_interpreters()
                   for t in cfg.interpreters]
    if cfg.detection is not None:
        stages += [detection.stage(i, a) for i in cfg.interpreters for a in cfg.attacks_for(i)]
    for stage in stages:
        for name, record in store.records(stage, data.attacked).items():
            if record.error is not None:
                table.rows.append([stage, name, record.error])
    if cfg.detection is not None:
        names = list(detection.benign_files(cfg, data))
        for name, record in store.records(detection.BENIGN, names).items():
            if record.error is not None:
                table.rows.append([detection.BENIGN, name, record.error])
    return table


def results_csv(cfg: ExperimentConfig, store: Store, data: ImageSet) -> str:
    """One row per interpreter × attack × image (errors included)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["interpreter", "attack", "image", "label", "target", "pred", "confidence",
                     "success", "l1", *[f"iou@{k:g}" for k in KS], "iou", "passes", "linf",
                     "error"])
    for interpreter in cfg.interpreters:
        for attack in cfg.attacks_for(interpreter):
            for name, r in store.records(f"{interpreter}/{attack}", data.attacked).items():
                if r.error is not None:
                    writer.writerow([interpreter, attack, name, *[""] * (9 + len(KS)), r.error])
                    continue
                m = r.meta
                writer.writerow([interpreter, attack, name, m["label"], m["target"], m["pred"],
                                 f"{m['confidence']:.6f}", int(m["success"]), f"{m['l1']:.6f}",
                                 *[f"{v:.6f}" for v in m["iou"]], f"{np.mean(m['iou']):.6f}",
                                 m["passes"], m["linf"], ""])
    return buf.getvalue()
