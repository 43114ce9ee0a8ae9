"""``adv2 run``: every interpreter × attack on one image set, transfer, detection, report.

Determinism, which resuming and sharding rest on: the unit of work is a fixed chunk of
``batch_size`` consecutive images of the image list (1 by default), the same for any number of
processes; every random choice of a unit (target class, ``shape``/``other`` target map, an
attack's random start or search) is seeded by :func:`~adv2.target_classes.seed_of` (the
experiment seed and the image name), never by the batch, the rank or the order of work. A
unit's record is written atomically when it finishes; a restarted run skips the units whose
records exist.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from adv2.experiment import detection, distributed, report, transfer
from adv2.experiment.config import ConfigError, ExperimentConfig
from adv2.experiment.images import ImageSet, prepare
from adv2.interpreters import Interpreter, build_interpreter
from adv2.lock import FolderLock
from adv2.models import Classifier, ModelError, load_model
from adv2.attack_config import build_attack
from adv2.batch import attack_batch
from adv2.outcome import Outcome
from adv2.provenance import versions
from adv2.records import Failed, Store, changed_keys, chunks, run_units, to_json, write_json

log = logging.getLogger(__name__)


def attack_unit(cfg: ExperimentConfig, model: Classifier, interpreter: Interpreter,
                attack_name: str, data: ImageSet, names: list[str]) -> list[Outcome | Failed]:
    """Attack one unit of images (:func:`adv2.batch.attack_batch`)."""
    rows = data.index(names)
    settings = cfg.attack_config(interpreter.name, attack_name, cfg.seed)
    attack = build_attack(settings, model, interpreter)
    return attack_batch(settings, model, interpreter, attack,
                        data.images[rows], data.labels[rows], data.targets[rows], names,
                        data.pool(model.device) if cfg.target_map == "other" else None)


def resolved_settings(cfg: ExperimentConfig, interpreters: dict[str, Interpreter]) -> dict:
    """What the experiment's settings resolve to with this adv2's defaults, per interpreter and
    attack (:meth:`adv2.attack_config.AttackConfig.recorded`, as ``adv2 attack`` records them), as
    the JSON values ``experiment.json`` holds."""
    out = {name: {attack: cfg.attack_config(name, attack, cfg.seed).recorded(interpreter)
                  for attack in cfg.attacks_for(name)}
           for name, interpreter in interpreters.items()}
    return json.loads(to_json(out))


def claim(store: Store, cfg: ExperimentConfig, interpreters: dict[str, Interpreter]) -> None:
    """Record the config, and what its defaults resolve to, in a new run directory; or check
    that an existing one was made with the same config and the same resolved settings (else
    :class:`ConfigError` naming the changed keys: a default that changed between adv2 versions
    would otherwise mix images attacked under two settings in one report)."""
    path = store.root / "experiment.json"
    resolved = resolved_settings(cfg, interpreters)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("digest") != cfg.digest():
            changed = changed_keys(old.get("config", {}), cfg.to_dict(), ("report",))
            raise ConfigError(
                f"{store.root} holds results of a different experiment (changed: "
                f"{', '.join(changed) or 'the version of the config format'}); choose another "
                "output directory (--out) or delete this one")
        if old.get("resolved") != resolved:
            changed = changed_keys(old.get("resolved") or {}, resolved)
            what = (f"defaults that resolve differently now (changed: {', '.join(changed)})"
                    if "resolved" in old else "an adv2 that did not record its resolved defaults")
            raise ConfigError(
                f"{store.root} holds results of the same experiment file made with {what}; "
                "resume it with the adv2 that made it ('versions' in its experiment.json), "
                "choose another output directory (--out) or delete this one")
        return
    write_json(path, {"config": cfg.to_dict(), "digest": cfg.digest(), "resolved": resolved,
                      "versions": versions()})


def run_experiment(cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the experiment into ``out``; returns the report's summary (rank 0) or
    an empty dict (other ranks). Rank 0 holds ``out`` (:class:`~adv2.lock.FolderLock`) from
    before it writes there to the end; the other ranks write only after its first barrier."""
    start = time.time()
    ctx = distributed.init(cuda=cfg.device.startswith("cuda"))
    store = Store(out)
    try:
        try:
            model = load_model(cfg.model, cfg.weights, ctx.device(cfg.device))
        except ModelError as exc:
            raise ConfigError(f"model: {exc}") from exc
        # inputs first, so that bad ones stop the run before its directory exists
        data = prepare(cfg, model)
        try:
            interpreters = {name: build_interpreter(name, model,
                                                    **cfg.interpreter_settings.get(name, {}))
                            for name in cfg.interpreters}
        except (ModelError, ValueError) as exc:
            raise ConfigError(f"interpreters: {exc}") from exc
        with FolderLock(store.root) if ctx.main else nullcontext():
            _open(ctx, store, cfg, interpreters, data)
            stage_seconds, detector_seconds = _stages(ctx, cfg, model, interpreters, store,
                                                      data, progress)
            if not ctx.main:
                return {}
            _log_invocation(store, ctx.world, time.time() - start, stage_seconds,
                            detector_seconds)
            return report.build(cfg, store, data)
    finally:
        ctx.close()


def _open(ctx: distributed.Context, store: Store, cfg: ExperimentConfig,
          interpreters: dict[str, Interpreter], data: ImageSet) -> None:
    """Claim the run directory (:func:`claim`), clear what killed writers left and write
    images.json (rank 0, before the barrier); the other ranks check the claim after it."""
    if ctx.main:
        claim(store, cfg, interpreters)
        removed = store.remove_temporaries()
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        write_json(store.root / "images.json", data.manifest())
    ctx.barrier()
    if not ctx.main:
        claim(store, cfg, interpreters)  # rank 0 wrote or checked it: this only reads
        same_images(store, data, ctx.rank)


def same_images(store: Store, data: ImageSet, rank: int) -> None:
    """Refuse, as a :class:`ConfigError`, a rank whose images differ from those rank 0 wrote
    to ``images.json`` (a file added, removed or changed between the ranks' reads would give
    one unit different images in different ranks)."""
    path = store.root / "images.json"
    keys = ("name", "label", "target", "skipped", "digest")
    theirs = {i["name"]: [i.get(k) for k in keys] for i in json.loads(path.read_text())["images"]}
    mine = {i["name"]: [i.get(k) for k in keys] for i in data.manifest()["images"]}
    differ = sorted(n for n in theirs.keys() | mine.keys() if theirs.get(n) != mine.get(n))
    if differ:
        raise ConfigError(f"rank {rank} reads other images than rank 0 wrote to {path}: "
                          f"{', '.join(differ[:5])}{' …' if len(differ) > 5 else ''} differ; "
                          "every rank must see the same files (none added or changed while "
                          "the ranks start)")


def _stages(ctx: distributed.Context, cfg: ExperimentConfig, model: Classifier,
            interpreters: dict[str, Interpreter], store: Store, data: ImageSet,
            progress: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Every interpreter's attacks, then transfer and detection, each ending at a barrier;
    returns the seconds of each stage and each detector's seconds per image."""
    units = chunks(data.attacked, cfg.batch_size)
    stage_seconds: dict[str, float] = {}
    for name, interpreter in interpreters.items():
        t0 = time.time()
        if ctx.main and name in cfg.adv2_skipped():
            log.info("%s: ADV² skipped: the interpreter is not differentiable", name)
        for attack in cfg.attacks_for(name):
            run_units(ctx, store, f"{name}/{attack}", units,
                      lambda u, a=attack, i=interpreter: attack_unit(cfg, model, i, a, data, u),
                      progress, data.digests)
        ctx.barrier()
        stage_seconds[name] = round(time.time() - t0, 1)
        if ctx.main:
            log.info("%s", report.interpreter_line(cfg, store, data, name,
                                                   stage_seconds[name]))
    if cfg.transfer:
        t0 = time.time()
        transfer.run(ctx, cfg, interpreters, store, data, progress)
        ctx.barrier()
        stage_seconds["transfer"] = round(time.time() - t0, 1)
    detector_seconds: dict[str, float] = {}
    if cfg.detection is not None:
        t0 = time.time()
        detector_seconds = detection.run(ctx, cfg, model, store, data, progress)
        ctx.barrier()
        stage_seconds["detection"] = round(time.time() - t0, 1)
    return stage_seconds, detector_seconds


def _log_invocation(store: Store, world: int, seconds: float, stages: dict[str, float],
                    detectors: dict[str, float]) -> None:
    """Append this invocation's wall time, per stage, and each detector's seconds per image
    it scored to ``timing.json`` (a resumed run has several)."""
    path = store.root / "timing.json"
    runs = json.loads(path.read_text())["invocations"] if path.is_file() else []
    runs.append({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "processes": world, "seconds": round(seconds, 1), "stage_seconds": stages,
                 "detector_seconds_per_image": detectors})
    write_json(path, {"invocations": runs, "total_seconds": round(sum(r["seconds"]
                                                                      for r in runs), 1)})
