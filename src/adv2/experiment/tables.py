"""Result tables, each written as Markdown, CSV and LaTeX (and inlined in the HTML page)."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field

#: ADV² in each output format
ADV2_NAMES = {"text": "ADV²", "latex": r"ADV$^2$"}
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
    return (out.replace("ADV²", ADV2_NAMES["latex"]).replace("²", r"$^2$")
            .replace("→", r"$\to$").replace("↓", r"$\downarrow$").replace("≥", r"$\geq$")
            .replace("×", r"$\times$"))


@dataclass
class Table:
    """A titled table. ``formats``: a format spec per column (``".3f"``; ``""`` for text);
    cells may be None (shown as ``blank``, "–" unless told, and left empty in CSV). In
    Markdown, numeric columns are right-aligned unless ``aligned`` is False, and an empty cell
    is written ``| |``.

    Examples:
        >>> Table("t", "T", ["name", "IoU"], ["", ".3f"], [["a", 0.12345], ["b", None]],
        ...       blank="", aligned=False).markdown()
        '| name | IoU |\\n|---|---|\\n| a | 0.123 |\\n| b | |\\n'
    """

    id: str
    title: str
    columns: list[str]
    formats: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""
    blank: str = "–"
    aligned: bool = True

    def cells(self) -> list[list[str]]:
        """Rows as formatted text."""
        return [self._texts(row) for row in self.rows]

    def _texts(self, row: list) -> list[str]:
        return [(self.blank if v is None else format(v, f)) for v, f in zip(row, self.formats)]

    def line(self, row: list) -> str:
        """One row (values, as in :attr:`rows`) as a Markdown line."""
        return _markdown_line(self._texts(row))

    def markdown(self) -> str:
        rule = ("---" if f == "" or not self.aligned else "---:" for f in self.formats)
        lines = [_markdown_line(self.columns), "|" + "|".join(rule) + "|"]
        lines += [_markdown_line(row) for row in self.cells()]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """Full precision values (floats with up to 6 decimals)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                             for v in row])
        return buf.getvalue()

    def latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
        spec = "".join("l" if f == "" else "r" for f in self.formats)
        lines = [f"% {self.title}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(latex_escape(c) for c in self.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in self.cells()]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.cells())
        return (f'<table id="table-{self.id}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")


def _markdown_line(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
