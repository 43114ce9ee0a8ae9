"""Help text of the ``adv2`` command line: defaults as a user writes them, and the defaults of
an attack setting across the interpreters."""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass

from adv2.attacks import DISPLAY_NAMES
from adv2.attacks.pgd import PGD_DEFAULTS
from adv2.interpreters import INTERPRETERS, Interpreter


def fraction(value: float) -> str:
    """A float as help text: ``k/255`` (``1/255``, ``8/255``) for one whose ``%g`` text is not
    exact, else that text (``0.004``, ``0.2``)."""
    text = f"{value:g}"
    k = round(value * 255)
    if float(text) != value and 0 < k < 255 and math.isclose(value, k / 255):
        return f"{k}/255"
    return text


def shown(value: object, none: str = "null") -> str:
    """A default as a user writes it: floats as :func:`fraction`, booleans ``true``/``false``,
    ``None`` as ``none``, lists, mappings and settings dataclasses in YAML's flow style."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fraction(value)
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v, none) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v, none)}" for k, v in value.items()) + "}"
    return str(value)


def with_default(text: str, default: object) -> str:
    """An option's help: ``text`` and its default (:func:`shown`; a string as it is)."""
    return f"{text} (default: {default if isinstance(default, str) else shown(default)})"


def per_interpreter(values: dict[str, str]) -> str:
    """Each interpreter's value as help text, or one when they all agree.

    Examples:
        >>> per_interpreter({"cam": "0.9", "grad": "0.9"})
        'every interpreter 0.9'
        >>> per_interpreter({"cam": "1", "grad": "2"})
        'cam 1, grad 2'
    """
    if len(set(values.values())) == 1:
        return f"every interpreter {next(iter(values.values()))}"
    return ", ".join(f"{name} {value}" for name, value in sorted(values.items()))


def blackbox_defaults(key: str, none: str = "null") -> str:
    """Each interpreter's ``blackbox_attack_defaults[key]``, as help text."""
    return per_interpreter({name: shown(cls.blackbox_attack_defaults.get(key), none=none)
                            for name, cls in INTERPRETERS.items()})


def attack_defaults(key: str) -> str:
    """The defaults of an attack setting, as help text: PGD's and each interpreter's ADV²."""
    def adv2_default(cls: type[Interpreter]) -> str:
        value = shown(cls.attack_defaults.get(key), none="off")
        if key in cls.support_attack_defaults:
            value += f" (with a support: {shown(cls.support_attack_defaults[key], none='off')})"
        return value

    pgd = (f"{DISPLAY_NAMES['pgd']} {shown(PGD_DEFAULTS[key])}; " if key in PGD_DEFAULTS
           else "")
    adv2 = per_interpreter({name: adv2_default(cls) for name, cls in INTERPRETERS.items()})
    return f"default: {pgd}{DISPLAY_NAMES['adv2']} {adv2}"
