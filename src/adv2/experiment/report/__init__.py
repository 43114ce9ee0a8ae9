"""The experiment report, merged from the per-image records: ``RUN/report/``.

    results.csv          one row per interpreter × attack × image
    tables/<id>.md|csv|tex   attack settings, attacks (success, confidence, L1, IoU per k and
                         mean), transfer L1 / IoU matrices, detection, errors
    figures/<id>.png     IoU against k, L1 bars, example grid
    report.md            every table and figure, with the run's images, seed and time
    index.html           the same page, self-contained (tables inline, figures as base64 PNG)
    manifest.json        the ids of every table and figure the page holds
    summary.json         the headline numbers

The report is rebuilt from the records at the end of every invocation, into a temporary folder
that then replaces ``report/``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from adv2 import metrics
from adv2.attacks import DISPLAY_NAMES
from adv2.detection import Thresholds, cross_validated_flags, with_joint
from adv2.experiment import detection, transfer
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.records import Record, Store, write_json
from adv2.experiment.tables import Table
from adv2.figures import panel_grid
from adv2.interpreters.plugins import label

KS = metrics.DEFAULT_KS


@dataclass
class Stats:
    """Means over one interpreter × attack's finished images (None when there are none)."""

    n: int
    errors: int
    success: float | None
    confidence: float | None
    l1: float | None
    iou_k: list[float] | None
    passes: float | None

    @property
    def iou(self) -> float | None:
        return float(np.mean(self.iou_k)) if self.iou_k else None


def _skipped(cfg: ExperimentConfig, consequence: str) -> str:
    """A sentence naming the interpreters ADV² skips (not differentiable) and ``consequence``
    for the table it ends; empty when it skips none."""
    names = cfg.adv2_skipped()
    return f" ADV² skips {', '.join(names)} (not differentiable){consequence}." if names else ""


def _ok(records: dict[str, Record]) -> list[Record]:
    return [r for r in records.values() if r.error is None]


def stats(records: dict[str, Record]) -> Stats:
    ok = _ok(records)
    if not ok:
        return Stats(0, len(records), None, None, None, None, None)

    def mean(key: str) -> float:
        return float(np.mean([r.meta[key] for r in ok]))

    return Stats(len(ok), len(records) - len(ok), mean("success"), mean("confidence"),
                 mean("l1"), np.mean([r.meta["iou"] for r in ok], axis=0).tolist(),
                 mean("passes"))


def interpreter_line(cfg: ExperimentConfig, store: Store, data: ImageSet, interpreter: str,
                     seconds: float) -> str:
    """One line per finished interpreter: success, confidence, L1 and IoU of each attack."""
    parts = []
    for attack in cfg.attacks_for(interpreter):
        s = stats(store.records(f"{interpreter}/{attack}", data.attacked))
        if s.n:
            parts.append(f"{DISPLAY_NAMES[attack]} success {s.success:.3f} conf "
                         f"{s.confidence:.3f} L1 {s.l1:.4f} IoU {s.iou:.3f}")
        else:
            parts.append(f"{DISPLAY_NAMES[attack]} no finished image")
    errors = sum(stats(store.records(f"{interpreter}/{a}", data.attacked)).errors
                 for a in cfg.attacks_for(interpreter))
    return (f"{interpreter}: " + " | ".join(parts)
            + f" ({len(data.attacked)} images, {errors} errors, {seconds:.0f} s)")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


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
            ok = _ok(store.records(transfer.stage(source, target), names))
            m_l1 = float(np.mean([r.meta["l1"] for r in ok])) if ok else None
            m_iou = float(np.mean([r.meta["iou"] for r in ok])) if ok else None
            row_l1.append(m_l1)
            row_iou.append(m_iou)
            summary.setdefault(source, {})[target] = {"l1": m_l1, "iou": m_iou, "images": len(ok)}
        l1.rows.append(row_l1)
        iou.rows.append(row_iou)
    return [l1, iou], summary


def detector_seconds(timing: dict) -> dict[str, float]:
    """Each detector's wall seconds per image, from the last invocation of ``timing`` (the
    content of ``timing.json``) that scored with it."""
    cost: dict[str, float] = {}
    for invocation in timing.get("invocations", []):
        cost |= invocation.get("detector_seconds_per_image", {})
    return cost


def detection_table(cfg: ExperimentConfig, store: Store, data: ImageSet,
                    timing: dict) -> tuple[Table, dict]:
    """Each detector's thresholds fitted on the benign scores and the detection rates of
    successful adversarial images per score column and jointly; the summary also holds each
    detector's seconds per image (:func:`detector_seconds`)."""
    assert cfg.detection is not None
    fpr = cfg.detection.fpr
    benign = _ok(store.records(detection.BENIGN, list(detection.benign_files(cfg, data))))
    attacked = {(i, a): [r for r in _ok(store.records(detection.stage(i, a), data.attacked))
                         if r.meta["success"]]
                for i in cfg.interpreters for a in cfg.attacks_for(i)}
    columns = [f"benign (n={len(benign)})"]
    folds = min(10, len(benign))
    if folds >= 2:
        columns.append(f"benign held out ({folds}-fold)")
    columns += [f"{DISPLAY_NAMES[a]} {i} (n={len(ok)})" for (i, a), ok in attacked.items()]
    table = Table("detection", "Detection rate of successful adversarial images (thresholds at "
                  f"{fpr:.0%} false positives on the benign images)",
                  ["detector", "score", "threshold", *columns],
                  ["", "", ".4f", *[".1%"] * len(columns)],
                  note="Benign: the false-positive rate on the images the thresholds were "
                       "fitted on; benign held out: each benign image scored against "
                       "thresholds fitted the same way on the other folds. A detector flags "
                       "an image when its joint score (the maximum of its scores) is above "
                       "the joint threshold. Each detector's seconds per image are in the "
                       "page's header.")
    summary: dict = {"thresholds": {}, "joint_threshold": {},
                     "seconds_per_image": detector_seconds(timing),
                     "rates": {c: None for c in columns}}
    for name in cfg.detection.detectors:
        if not benign:
            table.rows.append([name, None, None, *[None] * len(columns)])
            continue
        names = benign[0].meta["columns"][name]
        scores = _scores(benign, name)
        fitted = Thresholds.fit(scores, fpr)
        rates = [_rates(fitted, scores)]
        if folds >= 2:  # held-out rate: each image against thresholds fitted without its fold
            rates.append(cross_validated_flags(with_joint(scores), fpr, folds, cfg.seed)
                         .float().mean(dim=0).tolist())
        rates += [_rates(fitted, _scores(ok, name)) if ok else None for ok in attacked.values()]
        rows = [*names, "joint"] if len(names) > 1 else names
        thresholds = [*fitted.columns.tolist(), fitted.joint]
        for j, row in enumerate(rows):
            table.rows.append([name, row, thresholds[j],
                               *[None if r is None else r[j] for r in rates]])
        summary["thresholds"] |= {f"{name}/{c}": t for c, t in zip(names, thresholds)}
        summary["joint_threshold"][name] = fitted.joint
        for column, r in zip(columns, rates):
            if r is not None:
                summary["rates"][column] = (summary["rates"][column] or {}) | {
                    f"{name}/{c}": v for c, v in zip([*names, "joint"], r)}
    return table, summary


def _scores(records: list[Record], detector: str) -> torch.Tensor:
    return torch.tensor([r.meta["scores"][detector] for r in records], dtype=torch.float32)


def _rates(fitted: Thresholds, scores: torch.Tensor) -> list[float]:
    found = fitted.decide(scores)
    return [*found.flags.float().mean(dim=0).tolist(), float(found.joint_flag.float().mean())]


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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


def _header(cfg: ExperimentConfig, data: ImageSet, timing: dict) -> list[tuple[str, str]]:
    invocations = timing.get("invocations", [])
    cost = detector_seconds(timing) if cfg.detection is not None else {}
    return [
        ("model", cfg.model + (f" (weights {cfg.weights})" if cfg.weights else "")),
        ("images", (f"{len(data.attacked)} attacked of {len(data.names)} loaded from "
                    f"{cfg.images} (limit {cfg.limit or 'none'}); {len(data.load_errors)} "
                    "unreadable")),
        ("seed", str(cfg.seed)),
        ("interpreters", ", ".join(cfg.interpreters)),
        ("target map", cfg.target_map),
        ("eps", f"{cfg.eps:.5f} ({cfg.eps * 255:.1f}/255)"),
        ("wall time", (f"{timing.get('total_seconds', 0):.0f} s over {len(invocations)} "
                       f"finished invocation(s), processes "
                       f"{[r['processes'] for r in invocations]}")),
        *([("detection cost", ", ".join(f"{name} {seconds:.4f} s / image"
                                        for name, seconds in cost.items()))] if cost else []),
    ]


def markdown_page(title: str, header: list[tuple[str, str]], tables: list[Table],
                  figures: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in header] + [""]
    for table in tables:
        lines += [f"## {table.title}", "", table.markdown()]
        if table.note:
            lines += [table.note, ""]
        lines += [f"(`tables/{table.id}.csv`, `tables/{table.id}.tex`)", ""]
    for fid, caption in figures:
        lines += [f"## {caption}", "", f"![{caption}](figures/{fid}.png)", ""]
    return "\n".join(lines)


def html_page(title: str, header: list[tuple[str, str]], tables: list[Table],
              figures: list[tuple[str, str, bytes]]) -> str:
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;"
             "padding:2px 8px;font-size:13px}td{text-align:right}th{background:#eee}"
             "img{max-width:100%}p.note{font-size:12px;color:#444}")
    parts = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
              f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1><ul>")]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in header]
    parts.append("</ul>")
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2>{table.html()}")
        if table.note:
            parts.append(f"<p class='note'>{html.escape(table.note)}</p>")
    for fid, caption, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><figure><img id='figure-{fid}' "
                     f"alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build(cfg: ExperimentConfig, store: Store, data: ImageSet) -> dict:
    """Write ``RUN/report/`` from the records; returns the summary (also summary.json)."""
    final = store.root / "report"
    tmp = store.root / f".report.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tables").mkdir(parents=True)
    (tmp / "figures").mkdir()
    names = data.attacked
    attack_table, attack_summary = attacks_table(cfg, store, names)
    tables = [settings_table(cfg), attack_table]
    summary: dict = {"attacks": attack_summary}
    if cfg.transfer:
        transfer_list, summary["transfer"] = transfer_tables(cfg, store, names)
        tables += transfer_list
    timing_path = store.root / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if cfg.detection is not None:
        det_table, summary["detection"] = detection_table(cfg, store, data, timing)
        tables.append(det_table)
    tables.append(errors_table(cfg, store, data))
    for table in tables:
        for ext, text in (("md", table.markdown()), ("csv", table.csv()), ("tex", table.latex())):
            (tmp / "tables" / f"{table.id}.{ext}").write_text(text)
    (tmp / "results.csv").write_text(results_csv(cfg, store, data))

    figures = [("iou_k", "IoU against k, PGD vs ADV², per interpreter"),
               ("l1", "L1 to the target map, PGD vs ADV²")]
    iou_figure(tmp / "figures" / "iou_k.png", cfg, attack_summary)
    l1_figure(tmp / "figures" / "l1.png", cfg, attack_summary)
    examples = example_names(cfg, store, data)
    if examples:
        examples_figure(tmp / "figures" / "examples.png", cfg, store, data, examples)
        figures.append(("examples", ("Examples: image, then per interpreter the benign, PGD "
                                     "and ADV² maps (target class)")))
    header = _header(cfg, data, timing)
    title = f"adv2 experiment: {cfg.model}, {', '.join(cfg.interpreters)}"
    (tmp / "report.md").write_text(markdown_page(title, header, tables, figures))
    pngs = [(fid, cap, (tmp / "figures" / f"{fid}.png").read_bytes()) for fid, cap in figures]
    (tmp / "index.html").write_text(html_page(title, header, tables, pngs))
    write_json(tmp / "manifest.json", {"tables": [t.id for t in tables],
                                       "figures": [fid for fid, _ in figures]})
    summary |= {"images": len(names), "errors": len(tables[-1].rows),
                "seconds": timing.get("total_seconds"), "report": str(final / "index.html")}
    write_json(tmp / "summary.json", summary)
    old = store.root / f".report-old.{os.getpid()}.tmp"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return summary
