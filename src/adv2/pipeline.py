"""``adv2 attack``: attack a set of images into a resumable output folder (:mod:`adv2.output`),
prepared as ``adv2 run`` prepares them (:func:`~adv2.preparation.prepare_images`), in units of
:func:`~adv2.batch.attack_batch`, the one batch body of both."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from adv2 import metrics
from adv2.attack_config import AttackConfig, build_attack
from adv2.attack_maps import Pool
from adv2.batch import attack_batch
from adv2.data import Sample
from adv2.interpreters import build_interpreter
from adv2.models import Classifier
from adv2.output import RunWriter
from adv2.outcome import Outcome
from adv2.preparation import prepare_images
from adv2.records import Alone, Failed, chunks, input_digest, run_units

#: the run, with the attack's settings, builder, batch body and pool it is made of
__all__ = ["AttackConfig", "Pool", "attack_batch", "build_attack", "run"]

log = logging.getLogger(__name__)


def run(
    cfg: AttackConfig,
    model: Classifier,
    samples: list[Sample],
    out: str | Path,
    skipped: list[tuple[str, str]] = (),
    progress: bool = True,
    overwrite: bool = False,
    ignored: list[tuple[str, str]] = (),
    warnings: list[tuple[str, str]] = (),
) -> dict:
    """Attack ``samples`` into the output folder ``out`` (see :mod:`adv2.output`); returns the
    summary. Resumable: a rerun with the same settings skips the images already recorded for
    the same pictures; other settings are refused naming the changed keys (``overwrite``
    starts afresh).

    Images without a label take the model's prediction as their label. Units are fixed chunks
    of ``batch_size`` images of the list, each seeded by its first image's key; an image or
    a unit that fails is recorded with its error (in summary.json) and the run goes on.
    ``skipped`` (files that could not be read), ``ignored`` (other files passed over) and
    ``warnings``: (file, message) pairs named in summary.json too.

    Examples:
        >>> run(AttackConfig(interpreter="cam", attack="adv2"), model, samples, "runs/cam")
    """
    start = time.time()
    interpreter = build_interpreter(cfg.interpreter, model, **cfg.interpreter_settings)
    if samples:  # every setting checked before anything is written
        cfg.validate()
        prepared = prepare_images(samples, model, cfg.seed, cfg.target_class, cfg.target_map,
                                  cfg.batch_size, str(out))
    attack = build_attack(cfg, model, interpreter)
    settings = cfg.recorded(interpreter) | {"attack_config": attack.config()}
    with RunWriter(out, settings, overwrite) as writer:
        for file, message in skipped:
            writer.error(file, message)
        for file, reason in ignored:
            writer.ignore(file, reason)
        for file, message in warnings:
            writer.warn(file, message)
        if not samples:
            log.error("no readable images to attack")
            return writer.finish(time.time() - start, metrics.DEFAULT_KS, None)

        for i, reason in prepared.skipped.items():
            log.error("skipping %s: %s", samples[i].name, reason)
            writer.error(samples[i].name, reason)
        rows = {samples[i].name: i for i in range(len(samples)) if i not in prepared.skipped}
        writer.expect(list(rows))
        images, labels, preds = prepared.images, prepared.labels, prepared.preds
        pool = (Pool.of(images, labels, preds, model.device) if cfg.target_map == "other"
                else None)

        def work(names: list[str]) -> list[Outcome | Failed]:
            index = [rows[n] for n in names]
            outcomes = [o if isinstance(o, Failed) else replace(o, clean_pred=int(preds[i]))
                        for i, o in zip(index, attack_batch(
                            cfg, model, interpreter, attack, images[index], labels[index],
                            prepared.targets[index], names, pool))]
            writer.save_samples(names, images[index], outcomes, cfg.entry().display_name)
            return outcomes

        run_units(Alone(), writer.store, "", chunks(list(rows), cfg.batch_size), work, progress,
                  {n: input_digest(samples[i].digest, int(labels[i]), int(prepared.targets[i]))
                   for n, i in rows.items()}, after=writer.write_results)
        summary = writer.finish(time.time() - start, metrics.DEFAULT_KS, prepared.accuracy)
    log.info("%s/%s on %d images: success %.3f, L1 %.4f, IoU %.3f (%s)", cfg.attack,
             cfg.interpreter, summary["n_images"], summary["success_rate"] or 0,
             summary["l1_mean"] or 0, summary["iou_mean"] or 0, out)
    return summary
