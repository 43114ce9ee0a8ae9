"""The documentation agrees with what generates it: the README's results table with the
benchmark pages, the command pages with the argparse parser, the README's links with files."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from conftest import load_file

from adv2.benchmarking import pages

ROOT = Path(__file__).resolve().parents[1]
mkdocs_hooks = load_file("tools/mkdocs_hooks.py")  # the file mkdocs.yml's hooks load


def test_readme_results_table_matches_the_benchmark_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    assert pages.with_table(readme, pages.results_table(ROOT)) == readme


def test_results_table_reads_a_page_row() -> None:
    page = ("Command: `python benchmarks/attack_benchmark.py --interpreters x:2 "
            "--interpreter-setting layer=a.b`\n\n"
            "| interpreter | attack | n | success | IoU mean | passes / image |\n"
            "|---|---|---|---|---|---|\n"
            "| x | floor (±1/255 noise) | 2 | | 0.700 | |\n"
            "| x | PGD | 2 | 1.000 | 0.300 | 101.0 |\n"
            "| x | ADV² | 2 | 0.500 | 0.800 | 250.0 |\n\n"
            "| interpreter | ADV² step / PGD step |\n|---|---|\n| x | 2.50 |\n")
    assert pages.page_row("x", page) == (
        "| [x (layer=a.b)](docs/benchmarks/x.md) | 2 | 0.700 | 0.300 | 0.800 | 0.500 | "
        "250.0 | 2.50 |")
    with pytest.raises(ValueError, match="lacks"):
        pages.page_row("x", page.replace("| x | PGD |", "| y | PGD |"))


def test_command_pages_list_every_option_of_the_parser() -> None:
    parser = mkdocs_hooks.build_parser()
    for path in (["attack"], ["run"], ["detect", "fit"], ["detect", "score"], ["train-rts"],
                 ["demo"]):
        sub = mkdocs_hooks.subcommand(parser, path)
        table = mkdocs_hooks.options_table(sub)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in table, (path, flag)
    page = mkdocs_hooks.on_page_markdown("x\n<!-- adv2-cli: detect fit -->\n")
    assert "--fpr" in page and "<!--" not in page
    source = "<!-- adv2-cli: run -->\nOptions: `adv2 run -h` (listed here).\nnext"
    assert mkdocs_hooks.on_page_markdown(source).endswith("|\n\nnext")  # the line replaced
    with pytest.raises(KeyError, match="no command"):
        mkdocs_hooks.on_page_markdown("<!-- adv2-cli: attak -->")


def test_readme_is_short_and_its_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_experiment_page_documents_every_key() -> None:
    from adv2.experiment.config_keys import config_keys

    page = (ROOT / "docs" / "experiment.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \|", page, flags=re.M)
    for key, _ in config_keys():
        top, _, inner = key.partition(".")
        assert top in rows or any(row.startswith(top + ".") for row in rows), key
        assert not inner or inner in page, key


def test_docstring_examples_are_sections_the_api_reference_renders_as_code() -> None:
    # griffe's Google style reads "Examples:" as doctest code; "Example:" is an admonition of
    # nested quotes whose brackets Markdown takes for links
    singular = [f"{path.relative_to(ROOT)}:{i}"
                for path in sorted((ROOT / "src" / "adv2").rglob("*.py"))
                for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if line.strip() == "Example:"]
    assert not singular, singular


class Parsed(Exception):
    """Raised in place of running a script once its parser has accepted the arguments."""


@pytest.mark.parametrize("page", sorted((ROOT / "docs/benchmarks").glob("*.md")),
                         ids=lambda page: page.stem)
def test_every_benchmark_page_command_parses_with_its_script(
        page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``Command: `python benchmarks/....py ...``` a page prints is accepted by that
    script's parser as it is now (options, choices and types), so the page can be rerun."""
    commands = re.findall(r"^Command: `python (benchmarks/\w+\.py)([^`]*)`", page.read_text(),
                          flags=re.M)
    if page.stem != "index":
        assert commands, f"{page.name} names no command"
    real = argparse.ArgumentParser.parse_args

    def parse(parser, args=None, namespace=None):
        real(parser, args, namespace)
        raise Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    for script, arguments in commands:
        with pytest.raises(Parsed):
            load_file(script).main(shlex.split(arguments))
