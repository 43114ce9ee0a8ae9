"""The benchmarks' choice of images (attacked images are never those an interpreter was trained
on, and runs without a trained interpreter keep the images of their committed reports) and their
counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from detection_report import split  # noqa: E402
from rts_quality import removal_losses  # noqa: E402


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


def test_rts_quality_counts_removal_losses_and_the_ties_near_zero() -> None:
    # rows: area, kept, removed, box kept, box removed
    rows = np.array([[0.3, 0.5, 0.10, 0.4, 0.30],   # the mask removes more: not counted
                     [0.3, 0.5, 0.02, 0.4, 0.01],   # loses, both below 0.05
                     [0.3, 0.5, 0.60, 0.4, 0.05],   # loses for real
                     [0.3, 0.5, 0.03, 0.4, 0.03]])  # a tie counts as a loss, near zero
    assert removal_losses(rows) == ("the mask does not remove more than the box on 3 of 4 "
                                    "images; on 2 of them both leave p(y) < 0.05")
