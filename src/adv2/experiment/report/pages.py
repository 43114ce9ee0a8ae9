"""The report's pages: its header, ``report.md`` and the self-contained ``index.html``."""

from __future__ import annotations

import base64
import html

from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.experiment.report.detection_table import detector_seconds
from adv2.experiment.tables import Table


def page_header(cfg: ExperimentConfig, data: ImageSet, timing: dict) -> list[tuple[str, str]]:
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
