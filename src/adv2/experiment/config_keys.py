"""The keys of the experiment file and their defaults, from the fields of
:class:`~adv2.experiment.config.ExperimentConfig` (what ``adv2 run -h`` lists)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from typing import Any

from adv2.experiment.config import ExperimentConfig


def config_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """Every key of the experiment file in field order, dotted inside a settings dataclass
    (``detection.fpr``), with its default (:data:`dataclasses.MISSING` for a required key)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in fields(cls):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        keys.append((prefix + f.name, default))
        inner = [t for t in (hints[f.name], *typing.get_args(hints[f.name]))
                 if dataclasses.is_dataclass(t)]
        keys += config_keys(inner[0], f"{prefix}{f.name}.") if inner else []
    return keys
