"""Settings written ``KEY=VALUE`` on a command line (``--interpreter-setting``,
``--detector-setting``, the benchmarks' settings)."""

from __future__ import annotations

import json


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a JSON literal (number, true/false, null, "string"), a boolean
    or none in any case (``False``, ``None``), or a bare string.

    Examples:
        >>> parse_setting("steps=50"), parse_setting("fast=False"), parse_setting("layer=a.b")
        (('steps', 50), ('fast', False), ('layer', 'a.b'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--interpreter-setting {text!r}: expected KEY=VALUE")
    words = {"true": True, "false": False, "none": None, "null": None}
    if value.lower() in words:
        return key, words[value.lower()]
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
