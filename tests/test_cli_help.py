"""``adv2 ... -h`` stands alone: every option has help showing its default, fractions read
``k/255``, the experiment file's keys are listed; alias flags refuse a conflicting
``--interpreter-setting``; ``-v`` goes before or after the command."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from adv2 import cli
from adv2.attacks import ATTACKS
from adv2.experiment.config import ExperimentConfig

ATTACK = ["attack", "--images", "x", "--out", "y"]


def _parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its prog (``adv2 detect fit``)."""
    found = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _parsers(sub)
    return found


PARSERS = _parsers(cli.build_parser())


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_command_is_found() -> None:
    assert set(PARSERS) == {"adv2", "adv2 attack", "adv2 detect", "adv2 detect fit",
                            "adv2 detect score", "adv2 run", "adv2 train-rts", "adv2 demo"}


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_option_has_help_with_its_default(prog) -> None:
    for action in _options(PARSERS[prog]):
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{prog} {name}: no help"
        assert "default" in action.help or "required" in action.help, \
            f"{prog} {name}: its help shows no default: {action.help!r}"


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_reads_as_a_user_writes(prog) -> None:
    text = PARSERS[prog].format_help()
    for raw in ("0.00392157", "0.00784314", "0.0313725", "False", "None", "True"):
        assert raw not in text, f"{prog} -h shows {raw!r}"


def test_fractions_are_shown_as_fractions() -> None:
    assert [cli.fraction(v) for v in (1 / 255, 2 / 255, 8 / 255, 0.004, 0.2, 0.05, 1.0)] \
        == ["1/255", "2/255", "8/255", "0.004", "0.2", "0.05", "1"]
    attack = PARSERS["adv2 attack"].format_help()
    assert "PGD 1/255" in attack and "(default: 8/255)" in attack
    assert [cli.shown(v) for v in (True, False, None, (1, "a"))] \
        == ["true", "false", "null", "[1, a]"]


def test_attack_choices_come_from_the_registry() -> None:
    (action,) = [a for a in PARSERS["adv2 attack"]._actions if a.dest == "attack"]
    assert list(action.choices) == list(ATTACKS)
    for name in ATTACKS:
        assert name in action.help


def test_target_map_help_explains_each_kind() -> None:
    (action,) = [a for a in PARSERS["adv2 attack"]._actions if a.dest == "target_map"]
    for kind in action.choices:
        assert f"{kind} (" in action.help


def _keys(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of an experiment file, from the dataclasses' fields."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        for inner in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(inner):
                keys += _keys(inner, f"{prefix}{f.name}.")
    return keys


def test_run_help_lists_every_experiment_key_with_its_default() -> None:
    lines = PARSERS["adv2 run"].format_help().splitlines()
    listed = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines
              if line.startswith("  ") and not line.lstrip().startswith("-")
              and len(line.split()) >= 2}
    keys = _keys(ExperimentConfig)
    assert {"images", "batch_size", "detection.fpr", "report.examples"} <= set(keys)
    for key in keys:
        assert key in listed, f"adv2 run -h does not list {key}"
    assert listed["images"] == "required"
    assert listed["batch_size"] == str(ExperimentConfig.batch_size)
    assert listed["eps"] == "8/255"
    assert listed["interpreters"] == "[cam, grad]"


@pytest.mark.parametrize("alias, setting", [("--mask-strategy", "strategy=track"),
                                            ("--rts-checkpoint", "checkpoint=rts.pt")])
def test_an_alias_and_its_interpreter_setting_together_are_a_usage_error(
        alias, setting, capsys) -> None:
    value = "alt" if alias == "--mask-strategy" else "other.pt"
    for order in ([alias, value, "--interpreter-setting", setting],
                  ["--interpreter-setting", setting, alias, value]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*ATTACK, *order])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert alias in err and "--interpreter-setting" in err and "Traceback" not in err
    args = cli.build_parser().parse_args([*ATTACK, alias, value, "--interpreter-setting",
                                          "lr=0.1"])
    assert args.interpreter_settings == ["lr=0.1"]


@pytest.mark.parametrize("argv, verbose", [
    ([*ATTACK], False), (["-v", *ATTACK], True), ([*ATTACK, "-v"], True),
    ([*ATTACK, "--verbose"], True), (["run", "x.yaml", "-v"], True),
    (["detect", "fit", "--images", "x", "--out", "y", "-v"], True),
    (["demo", "-v"], True), (["train-rts", "--images", "x", "--out", "y", "-v"], True),
])
def test_verbose_goes_before_or_after_the_command(argv, verbose) -> None:
    assert cli.build_parser().parse_args(argv).verbose is verbose
