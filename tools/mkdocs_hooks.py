"""MkDocs hooks: tables generated from adv2 itself, so that no page keeps a copy.

- ``<!-- adv2-cli: attack -->`` (or ``detect fit``, ``run``, ...): that command's options, from
  the argparse parser; the build fails on a command the parser does not have. The line after
  it, ``Options: `adv2 attack -h` ...``, is what a reader of the Markdown source sees instead;
  the table replaces it too.
- ``<!-- adv2-interpreter: cam -->``: the interpreter's settings (its class's keywords and their
  defaults), its ADV² defaults, and its row of the benchmark page, read from the registry and
  from ``docs/benchmarks/<name>.md``.
"""

from __future__ import annotations

import argparse
import html
import inspect
import re
from pathlib import Path

from adv2.benchmarking.pages import HEADER, page_row
from adv2.cli import build_parser, shown
from adv2.interpreters import INTERPRETERS

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- adv2-cli: ([a-z -]+?) -->(?:\nOptions: `adv2 [a-z -]+ -h`[^\n]*)?")
INTERPRETER = re.compile(r"<!-- adv2-interpreter: ([a-z_]+) -->")


def subcommand(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    """The parser of ``adv2 <path...>``; KeyError naming the path when there is none."""
    for name in path:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or name not in subs[0].choices:
            raise KeyError(f"adv2 has no command {' '.join(path)!r}")
        parser = subs[0].choices[name]
    return parser


def _cell(text: str, code: bool = False) -> str:
    text = " ".join(text.split())
    return (f"`{text}`" if code else html.escape(text, quote=False)).replace("|", "\\|")


def options_table(parser: argparse.ArgumentParser) -> str:
    """The usage line and one Markdown row per option: flags (with the metavar), help."""
    formatter = parser._get_formatter()
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.nargs != 0 and action.option_strings:
            flags += " " + formatter._format_args(action, action.dest.upper())
        text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {_cell(flags, code=True)} | {_cell(text)} |")
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sub in subs:
        for choice in sub._choices_actions:
            rows.append(f"| {_cell(choice.dest, code=True)} | {_cell(choice.help or '')} |")
    return f"```text\n{usage}\n```\n\n" + "\n".join(rows) + "\n"


def interpreter_tables(name: str, root: Path = ROOT) -> str:
    """The settings, ADV² defaults and measured row of the built-in interpreter ``name``."""
    cls = INTERPRETERS[name]  # KeyError naming an interpreter the registry does not have
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    out = ["### Settings", "", f"Keywords of `adv2.interpreters.{cls.__name__}` "
           "(`--interpreter-setting KEY=VALUE`, an experiment's `interpreter_settings`):", "",
           "| setting | default |", "|---|---|"]
    out += [f"| `{p.name}` | `{shown(p.default)}` |" for p in params]
    keys = list(dict.fromkeys([*cls.attack_defaults, *cls.support_attack_defaults]))
    out += ["", "### ADV² defaults", "", "`attack_defaults` (what `adv2 attack --attack adv2` "
            "and `adv2 run` take unless told otherwise), and `support_attack_defaults` over "
            f"them with a `--support` other than `full`; adaptive ADV² multiplies λ by "
            f"{shown(cls.adaptive_lam_scale)}.", "", "| setting | default | with a support |",
            "|---|---|---|"]
    for key in keys:
        base = cls.attack_defaults.get(key)
        confined = cls.support_attack_defaults.get(key, base)
        out.append(f"| `{key}` | `{shown(base, 'none')}` | `{shown(confined, 'none')}` |")
    page = root / "docs" / "benchmarks" / f"{name}.md"
    if page.exists():
        row = page_row(name, page.read_text()).replace("docs/benchmarks/", "../benchmarks/")
        out += ["", "### Measured", "", HEADER, row]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """Replace every marker with its generated tables."""
    parser = build_parser()
    markdown = MARKER.sub(lambda m: options_table(subcommand(parser, m.group(1).split())),
                          markdown)
    return INTERPRETER.sub(lambda m: interpreter_tables(m.group(1)), markdown)
