"""MkDocs hooks: the command pages' option tables, generated from adv2's argparse parser.

A page holds ``<!-- adv2-cli: attack -->`` (or ``detect fit``, ``run``, ...) where the table of
that command's options goes; the build fails on a command the parser does not have.
"""

from __future__ import annotations

import argparse
import html
import re

from adv2.cli import build_parser

MARKER = re.compile(r"<!-- adv2-cli: ([a-z -]+?) -->")


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


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """Replace every ``<!-- adv2-cli: ... -->`` marker with that command's options table."""
    parser = build_parser()
    return MARKER.sub(lambda m: options_table(subcommand(parser, m.group(1).split())),
                      markdown)
