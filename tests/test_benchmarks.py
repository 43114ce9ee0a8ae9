"""The benchmarks' choice of images: attacked images are never those an interpreter was trained
on, and runs without a trained interpreter keep the images of their committed reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from detection_report import split  # noqa: E402


def test_detection_split_without_trained_interpreters_is_the_permutation_tail() -> None:
    benign, pool = split(500, 440, seed=0)
    order = np.random.default_rng(0).permutation(500)
    assert (benign == order[:440]).all() and (pool == order[440:]).all()


def test_detection_split_attacks_only_images_no_interpreter_was_fitted_on() -> None:
    order = np.random.default_rng(0).permutation(500)
    fitted = np.zeros(500, dtype=bool)
    fitted[order[100:]] = True  # as RTS's checkpoint: the permutation's first 100 held out
    benign, pool = split(500, 440, seed=0, fitted=fitted)
    assert len(pool) == 60 and not fitted[pool].any()
    assert len(benign) == 440 and not set(benign) & set(pool)
    with pytest.raises(ValueError, match="lower --benign to at most 400"):
        split(500, 390, seed=0, fitted=fitted)  # 110 to attack, 100 unseen
