"""Schedules for λ (or any scalar) as a function of attack progress p ∈ [0,1]."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, progress: float) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    """Linear ramp from ``start`` (p = 0) to ``end`` (p = 1); the paper's CAM/RTS c → 2c."""

    start: float
    end: float

    def __call__(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        return self.start + (self.end - self.start) * p


@dataclass(frozen=True)
class Piecewise:
    """``values[i]`` on the i-th interval of progress delimited by ``boundaries`` (increasing,
    len(values) − 1 of them), e.g. GRAD's {1e-3, 4e-3, 1e-2, 5e-2}."""

    values: tuple[float, ...]
    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.boundaries) != len(self.values) - 1:
            raise ValueError("Piecewise needs exactly len(values) - 1 boundaries")
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError("Piecewise boundaries must increase")

    def __call__(self, progress: float) -> float:
        return self.values[bisect.bisect_right(self.boundaries, progress)]


@dataclass(frozen=True)
class Scaled:
    """A schedule (any ``progress -> value`` callable) multiplied by ``factor``."""

    schedule: Callable[[float], float]
    factor: float

    def __call__(self, progress: float) -> float:
        return self.factor * self.schedule(progress)



Schedule = Constant | Linear | Piecewise | Scaled


def parse_schedule(text: str) -> Schedule:
    """``"5"`` → Constant, ``"5:10"`` → Linear, ``"1e-3,4e-3@0.5"``-style lists are
    ``"v1,v2,v3@b1,b2"`` → Piecewise; a ValueError for a value that is not finite."""
    numbers = [float(v) for v in text.replace("@", ",").replace(":", ",").split(",")]
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{text!r}: values must be finite numbers")
    if "@" in text:
        values, bounds = text.split("@")
        return Piecewise(tuple(map(float, values.split(","))), tuple(map(float, bounds.split(","))))
    if ":" in text:
        start, end = text.split(":")
        return Linear(float(start), float(end))
    return Constant(float(text))
