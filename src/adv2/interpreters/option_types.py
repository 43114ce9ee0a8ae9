"""An interpreter's settings checked against its class's keywords before it is built: a value
of the wrong kind (``--interpreter-setting pool=abc`` where ``pool`` is an int) is a
ValueError naming the setting, not a failure inside the first batch.

A keyword is checked where its annotation is made of simple kinds (``int``, ``float``,
``bool``, ``str``, ``Path``, ``None`` and their unions) or, unannotated, where its default is
an int, float, bool or str; any other keyword is left to the class.

Examples:
    >>> from adv2.interpreters import GRAD
    >>> check_options(GRAD, {"pool": 8, "fast": False})
    >>> check_options(GRAD, {"pool": "abc"})
    Traceback (most recent call last):
    ...
    ValueError: pool: expected int, got 'abc'
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Union

_SIMPLE = (bool, int, float, str, Path, type(None))


def _fits(kind: type, value: Any) -> bool:
    """Whether ``value`` is a ``kind`` as a command line or YAML file writes it: an int is a
    float, a bool is not a number, a string is a Path."""
    if kind in (int, float):
        numbers = (int,) if kind is int else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, kind)


def _kinds(parameter: inspect.Parameter, hints: dict[str, Any]) -> tuple[type, ...] | None:
    """The simple kinds a keyword takes, or None where it is not checked."""
    hint = hints.get(parameter.name, inspect.Parameter.empty)
    if hint is inspect.Parameter.empty:
        default = parameter.default
        simple = isinstance(default, (bool, int, float, str))
        return (float if type(default) is int else type(default),) if simple else None
    kinds = (typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType)
             else (hint,))
    return kinds if all(k in _SIMPLE for k in kinds) else None


def check_options(cls: type, options: dict[str, Any]) -> None:
    """Raises a ValueError naming the first of ``options`` whose value is not of the kind the
    keyword of ``cls.__init__`` takes. Unknown keywords are left to the call (its TypeError).

    Arguments:
        cls: the interpreter's class.
        options: the keyword arguments it is about to be built with.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: only the defaults are checked
        hints = {}
    parameters = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        parameter = parameters.get(key)
        kinds = None if parameter is None else _kinds(parameter, hints)
        if kinds is not None and not any(_fits(kind, value) for kind in kinds):
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"{key}: expected {names}, got {value!r}")
