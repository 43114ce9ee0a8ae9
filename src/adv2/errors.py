"""The error of a bad setting, shared by attacks, detectors and their command lines, and the
check of a setting's every value."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class SettingError(ValueError):
    """A bad setting: ``key`` is its name (``eps``), ``problem`` what is wrong. The CLI shows
    it as ``--eps: ...``, an experiment file as ``attacks.adv2.eps: ...``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def check_each(key: str, values: Iterable[Any], check: Callable[[Any], object]) -> None:
    """Call ``check`` on every value of the setting ``key``; a ValueError it raises becomes a
    :class:`SettingError` naming ``key``."""
    for value in values:
        try:
            check(value)
        except ValueError as exc:
            raise SettingError(key, str(exc)) from None
