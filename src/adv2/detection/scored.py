"""The CSV of scored images that ``adv2 detect score --out`` writes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from adv2.detection.thresholds import Detection


def write_scores(path: str | Path, files: Sequence[str], columns: Sequence[str],
                 found: Detection) -> None:
    """One row per image: its file name, each score column (named by ``columns``), the joint
    score and ``flagged`` (1: the joint score is above its threshold).

    Examples:
        >>> write_scores("scores.csv", ["a.png"], ["bit-4"], detector.detect(x))  # doctest: +SKIP
    """
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *columns, "joint", "flagged"])
        rows = zip(files, found.scores.tolist(), found.joint.tolist(), found.joint_flag.tolist())
        for name, scores, joint, flag in rows:
            writer.writerow([name, *(f"{v:.6f}" for v in scores), f"{joint:.6f}", int(flag)])
