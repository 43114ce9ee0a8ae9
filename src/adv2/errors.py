"""The error of a bad setting, shared by attacks, detectors and their command lines."""

from __future__ import annotations


class SettingError(ValueError):
    """A bad setting: ``key`` is its name (``eps``), ``problem`` what is wrong. The CLI shows
    it as ``--eps: ...``, an experiment file as ``attacks.adv2.eps: ...``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
