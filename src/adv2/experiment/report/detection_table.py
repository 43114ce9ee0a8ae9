"""The report's detection table: thresholds fitted on the benign scores, the detection rates of
successful adversarial images, and each detector's cost."""

from __future__ import annotations

import torch

from adv2.attacks import DISPLAY_NAMES
from adv2.detection import fit_thresholds, held_out_folds
from adv2.experiment import detection
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.experiment.report.stats import finished
from adv2.experiment.tables import Table
from adv2.records import Record, Store


def detector_seconds(timing: dict) -> dict[str, float]:
    """Each detector's wall seconds per image, from the last invocation of ``timing`` (the
    content of ``timing.json``) that scored with it."""
    cost: dict[str, float] = {}
    for invocation in timing.get("invocations", []):
        cost |= invocation.get("detector_seconds_per_image", {})
    return cost


def detection_table(cfg: ExperimentConfig, store: Store, data: ImageSet,
                    timing: dict) -> tuple[Table, dict]:
    """Each detector's thresholds fitted on the benign scores and the detection rates of
    successful adversarial images per score column and jointly; the summary also holds each
    detector's seconds per image (:func:`detector_seconds`)."""
    assert cfg.detection is not None
    fpr = cfg.detection.fpr
    benign = finished(store.records(detection.BENIGN, list(detection.benign_files(cfg, data))))
    attacked = {(i, a): [r for r in finished(store.records(detection.stage(i, a), data.attacked))
                         if r.meta["success"]]
                for i in cfg.interpreters for a in cfg.attacks_for(i)}
    columns = [f"benign (n={len(benign)})"]
    folds = held_out_folds(len(benign), 10)
    if folds:
        columns.append(f"benign held out ({folds}-fold)")
    columns += [f"{DISPLAY_NAMES[a]} {i} (n={len(ok)})" for (i, a), ok in attacked.items()]
    table = Table("detection", "Detection rate of successful adversarial images (thresholds at "
                  f"{fpr:.0%} false positives on the benign images)",
                  ["detector", "score", "threshold", *columns],
                  ["", "", ".4f", *[".1%"] * len(columns)],
                  note="Benign: the false-positive rate on the images the thresholds were "
                       "fitted on; benign held out: each benign image scored against "
                       "thresholds fitted the same way on the other folds. A detector flags "
                       "an image when its joint score (the maximum of its scores) is above "
                       "the joint threshold. Each detector's seconds per image are in the "
                       "page's header.")
    summary: dict = {"thresholds": {}, "joint_threshold": {},
                     "seconds_per_image": detector_seconds(timing),
                     "rates": {c: None for c in columns}}
    for name in cfg.detection.detectors:
        if not benign:
            table.rows.append([name, None, None, *[None] * len(columns)])
            continue
        names = benign[0].meta["columns"][name]
        scores = _scores(benign, name)
        fit = fit_thresholds(scores, fpr, folds, cfg.seed)
        fitted = fit.thresholds
        rates = [fitted.decide(scores).rates()]
        if fit.held_out is not None:  # each image against thresholds fitted without its fold
            rates.append(list(fit.held_out_fpr(names).values()))
        rates += [fitted.decide(_scores(ok, name)).rates() if ok else None
                  for ok in attacked.values()]
        rows = [*names, "joint"] if len(names) > 1 else names
        thresholds = [*fitted.columns.tolist(), fitted.joint]
        for j, row in enumerate(rows):
            table.rows.append([name, row, thresholds[j],
                               *[None if r is None else r[j] for r in rates]])
        summary["thresholds"] |= {f"{name}/{c}": t for c, t in zip(names, thresholds)}
        summary["joint_threshold"][name] = fitted.joint
        for column, r in zip(columns, rates):
            if r is not None:
                summary["rates"][column] = (summary["rates"][column] or {}) | {
                    f"{name}/{c}": v for c, v in zip([*names, "joint"], r)}
    return table, summary


def _scores(records: list[Record], detector: str) -> torch.Tensor:
    """One detector's scores of ``records`` (n×columns), read from their meta on the host."""
    return torch.tensor([r.meta["scores"][detector] for r in records], dtype=torch.float32,
                        device="cpu")
