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
that then replaces ``report/``: :mod:`~adv2.experiment.report.stats` (means over the records),
:mod:`~adv2.experiment.report.attack_tables` and :mod:`~adv2.experiment.report.detection_table`
(the tables and ``results.csv``), :mod:`~adv2.experiment.report.figures` and
:mod:`~adv2.experiment.report.pages` (``report.md``, ``index.html``).
"""

from __future__ import annotations

import json
import os
import shutil

from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.experiment.report.attack_tables import (attacks_table, errors_table, results_csv,
                                                  settings_table, transfer_tables)
from adv2.experiment.report.detection_table import detection_table
from adv2.experiment.report.figures import (example_names, examples_figure, iou_figure,
                                            l1_figure)
from adv2.experiment.report.pages import html_page, markdown_page, page_header
from adv2.experiment.report.stats import interpreter_line
from adv2.records import Store, write_json

__all__ = ["build", "interpreter_line"]


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
    header = page_header(cfg, data, timing)
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
