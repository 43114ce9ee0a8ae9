"""Detection of the experiment's adversarial images by every configured detector.

The benign images of ``detection.benign_images`` (minus the attacked images, so the sets are
disjoint; the first ``benign_limit`` of the rest in sorted order) and every adversarial image
are scored per image by each detector of ``detection.detectors`` (records
``detection/benign/<image>`` and ``detection/<interpreter>/<attack>/<image>``, for the attacks
each interpreter met: :meth:`~adv2.experiment.config.ExperimentConfig.attacks_for`; their
``scores`` and ``columns`` by detector name); :func:`run` returns each detector's seconds per
image, which ``timing.json`` keeps. The report fits the thresholds on the benign scores
(:class:`~adv2.detection.Thresholds`) and counts the flagged successful adversarial images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from adv2.data import image_digest, list_images, load_image
from adv2.detection import Detector, build_detector
from adv2.experiment import distributed
from adv2.experiment.config import ConfigError, ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.models import Classifier
from adv2.outcome import Outcome
from adv2.records import Entry, Failed, Store, chunks, downstream_digests, run_units

log = logging.getLogger(__name__)

BENIGN = "detection/benign"


def stage(interpreter: str, attack: str) -> str:
    return f"detection/{interpreter}/{attack}"


def benign_files(cfg: ExperimentConfig, data: ImageSet) -> dict[str, Path]:
    """Name (its path relative to ``benign_images``) → path of the benign images the
    thresholds are fitted on."""
    assert cfg.detection is not None
    attacked = {Path(p).resolve() for p in data.paths}
    try:
        paths = [p for p in list_images(cfg.detection.benign_images)
                 if p.resolve() not in attacked]
    except FileNotFoundError as exc:
        raise ConfigError(f"detection.benign_images: {exc}") from exc
    paths = paths[:cfg.detection.benign_limit]
    if not paths:
        raise ConfigError(f"detection.benign_images: no image in {cfg.detection.benign_images} "
                          "apart from the attacked ones")
    root = Path(cfg.detection.benign_images)
    base = root if root.is_dir() else root.parent
    return {p.relative_to(base).as_posix(): p for p in paths}


def _scores(detectors: list[Detector], images: np.ndarray,
            cost: dict[str, list[float]]) -> list[Entry | Failed]:
    """Every detector's scores of each image and its score columns; adds each detector's
    seconds and images to its ``cost`` entry."""
    scores = {}
    for d in detectors:
        scores[d.name] = d.scores(images).tolist()
        spent = cost.setdefault(d.name, [0.0, 0])
        spent[0] += d.seconds_per_input * len(images)
        spent[1] += len(images)
    finite = [all(np.isfinite(scores[d.name][i]).all() for d in detectors)
              for i in range(len(images))]
    return [Entry({}, {"scores": {d.name: scores[d.name][i] for d in detectors},
                       "columns": {d.name: d.names for d in detectors}})
            if finite[i] else Failed("non-finite detector scores (NaN or infinity)")
            for i in range(len(images))]


def run(ctx: distributed.Context, cfg: ExperimentConfig, model: Classifier, store: Store,
        data: ImageSet, progress: bool) -> dict[str, float]:
    """Score the benign images, then every attack's adversarial images, with every detector.
    Returns each detector's wall seconds per image scored by this process (none for a
    detector that scored nothing: every record was there)."""
    assert cfg.detection is not None
    detectors = [build_detector(name, model, cfg.detection.detector_settings(name))
                for name in cfg.detection.detectors]
    cost: dict[str, list[float]] = {}
    files = benign_files(cfg, data)
    benign = {}
    for name, path in files.items():
        try:
            benign[name] = load_image(path, cfg.image_size)
        except Exception as exc:  # noqa: BLE001 - one unreadable benign image is left out
            message = f"cannot read image ({type(exc).__name__}: {exc})"
            log.error("detection: skipping benign image %s: %s", path, message)
            if ctx.main:
                store.save_error(BENIGN, name, message)
    run_units(ctx, store, BENIGN, chunks(list(benign), cfg.batch_size),
              lambda u: _scores(detectors, np.stack([benign[n] for n in u]), cost), progress,
              {n: image_digest(image) for n, image in benign.items()})

    def adversarial(stage_name: str, names: list[str]) -> list[Entry | Failed]:
        records = [store.load(stage_name, n) for n in names]
        for name, record in zip(names, records):
            if record is None or record.error is not None:
                raise RuntimeError(f"no adversarial image for {name}")
        outcomes = [Outcome.from_record(r) for r in records]
        outputs = _scores(detectors, np.stack([o.adv for o in outcomes]), cost)
        for output, outcome in zip(outputs, outcomes):
            if isinstance(output, Entry):
                output.meta["success"] = outcome.success
        return outputs

    units = chunks(data.attacked, cfg.batch_size)
    for interpreter in cfg.interpreters:
        for attack in cfg.attacks_for(interpreter):
            source = f"{interpreter}/{attack}"
            run_units(ctx, store, stage(interpreter, attack), units,
                      lambda u, s=source: adversarial(s, u), progress,
                      downstream_digests(store, data.digests, [source]))
    return {name: seconds / n for name, (seconds, n) in cost.items()}
