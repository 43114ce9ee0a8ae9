"""The benchmark pages: each script prints its page and writes it with ``--out``; the README's
results table is read from the pages (``tools/results_table.py``), one row per interpreter
page under ``docs/benchmarks/``: images, the noise floor(s), PGD's and ADV²'s IoU to the
benign map, ADV²'s success and passes per image, and the cost of one ADV² step in PGD steps
(the page's first table; for MASK its default strategy, ``track``)."""

from __future__ import annotations

import re
from pathlib import Path

PAGES = ["cam", "grad", "rts", "mask", "gradcam", "ig", "smoothgrad"]
HEADER = ("| interpreter | images | noise floor IoU | PGD IoU | ADV² IoU | ADV² success | "
          "ADV² passes / image | ADV² step / PGD step |\n|---|---|---|---|---|---|---|---|")
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"


def publish(text: str, out: Path | None, heading: str = "") -> None:
    """Print a page and, with ``out``, write it there (``heading`` first, folders made)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(heading + text)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``text``, in order.

    Examples:
        >>> table_rows("| a | b |\\n|---|---|\\n| 1 | |")
        [['a', 'b'], ['1', '']]
    """
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]


def command_line(text: str) -> str:
    """The page's ``Command:`` line (empty when it has none)."""
    return next((line for line in text.splitlines() if line.startswith("Command:")), "")


def page_row(name: str, text: str) -> str:
    """The README row of one benchmark page (ValueError naming what it lacks)."""
    rows = table_rows(text)
    header = next(r for r in rows if r[:2] == ["interpreter", "attack"])
    col = {key: header.index(key) for key in ("n", "success", "IoU mean", "passes / image")}

    def first(label: str) -> list[str] | None:
        return next((r for r in rows if len(r) == len(header) and r[0] == name
                     and r[1] == label), None)

    floor, pgd = first("floor (±1/255 noise)"), first("PGD")
    adv2 = first("ADV²") or first("ADV² (track)")
    cost = next((r for r in rows if len(r) == 2 and r[0] in (name, f"{name} (track)")), None)
    if not (floor and pgd and adv2 and cost):
        raise ValueError(f"docs/benchmarks/{name}.md lacks a floor, PGD, ADV² or step-cost row")
    floors = floor[col["IoU mean"]]
    redrawn = first("floor (another seed)")
    if redrawn:
        floors += f" / {redrawn[col['IoU mean']]}"
    settings = " ".join(re.findall(r"--interpreter-setting ([^\s`]+)", command_line(text)))
    label = f"{name} ({settings})" if settings else name
    return (f"| [{label}](docs/benchmarks/{name}.md) | {adv2[col['n']]} | {floors} | "
            f"{pgd[col['IoU mean']]} | {adv2[col['IoU mean']]} | {adv2[col['success']]} | "
            f"{adv2[col['passes / image']]} | {cost[1]} |")


def results_table(root: Path) -> str:
    """The whole table, one row per benchmark page under ``root/docs/benchmarks`` that
    exists."""
    lines = [HEADER]
    for name in PAGES:
        page = root / "docs" / "benchmarks" / f"{name}.md"
        if page.exists():
            lines.append(page_row(name, page.read_text()))
    return "\n".join(lines)


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md lacks the markers {START} … {END}")
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}"
