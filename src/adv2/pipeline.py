"""Attack a set of images end to end: settings and their validation, targets, target maps, the
attack of one batch, judging, and the resumable output folder of ``adv2 attack``.

:func:`attack_batch` is the one batch body of ``adv2 attack``, ``adv2 run`` and the demo.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adv2 import metrics, target_maps as target_maps_mod
from adv2.attacks import (ATTACKS, MAP_LOSSES, OPTIMIZERS, PREDICTION_LOSSES, Attack,
                          AttackSettings, SettingError, parse_schedule)
from adv2.attacks import support as support_mod
from adv2.attacks.settings import THREATS
from adv2.blackbox import ANSWERS
from adv2.attacks.result import AttackResult, distances
from adv2.data import Sample, sample_key, to_tensor
from adv2.interpreters import Interpreter, build_interpreter
from adv2.interpreters.plugins import require_differentiable, resolve
from adv2.models import Classifier
from adv2.records import Alone, Failed, Output, chunks, run_units
from adv2.target_classes import interpreter_seeds, per_image_targets, seed_of
from adv2.output import RunWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackConfig(AttackSettings):
    """Every setting of an attack run (saved as config.json): the attack's
    (:class:`~adv2.attacks.settings.AttackSettings`; ``None`` means the interpreter's default,
    filled by :meth:`resolved`) and the run's."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str = "cpu"  # the classifier's torch device: everything runs there
    interpreter: str = "cam"
    target_class: int | None = None
    target_map: str = "benign"
    batch_size: int = 8
    #: interpreter settings other than the defaults (keyword arguments of its class, e.g.
    #: MASK's attack ``strategy`` or RTS's ``checkpoint``)
    interpreter_settings: dict = field(default_factory=dict)

    def resolved(self) -> AttackConfig:
        """A copy with the attack's unset settings filled from its registry entry's defaults
        against the interpreter (:meth:`AttackSettings.resolved`)."""
        return AttackSettings.resolved(self, resolve(self.interpreter))

    def recorded(self, interpreter: Interpreter) -> dict[str, Any]:
        """What a run records and a resume compares: these settings with the defaults filled
        in, and the map settings of ``interpreter`` (``interpreter_config``)."""
        return asdict(self.resolved()) | {"interpreter_config": interpreter.config()}

    def validate(self, n_classes: int | None = None) -> None:
        """Check every setting (:func:`check_setting`), the attack's form under its threat and
        ``adaptive`` (:meth:`AttackSettings.entry`) and, once the model's ``n_classes`` is
        known, the target class; raises :class:`SettingError` naming the first bad one."""
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name))
        if self.optimizer not in (None, "sign") and self.attack == "pgd":
            raise SettingError("optimizer", "PGD takes sign steps; it applies to ADV² only")
        self.entry()
        if n_classes is not None and self.target_class is not None \
                and not 0 <= self.target_class < n_classes:
            raise SettingError("target_class", f"must be a class index in [0, {n_classes - 1}] "
                                               f"of the model, got {self.target_class}")


def parse_number(text: str | float | int) -> float:
    """A number, or a fraction text such as ``8/255`` (ValueError otherwise)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    num, slash, den = str(text).partition("/")
    try:
        return float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number or a fraction like 8/255, got {text!r}") from None


#: what each attack setting must be (checked by :func:`check_setting`)
_RANGES: dict[str, tuple[str, Any]] = {
    "eps": ("in (0, 1]", lambda v: 0 < v <= 1),
    "steps": ("≥ 0", lambda v: v >= 0),
    "warm_steps": ("≥ 0", lambda v: v >= 0),
    "patience": ("≥ 0", lambda v: v >= 0),
    "lam_search": ("≥ 0", lambda v: v >= 0),
    "lr": ("> 0", lambda v: v > 0),
    "lr_decay": ("> 0", lambda v: v > 0),
    "batch_size": ("≥ 1", lambda v: v >= 1),
    "limit": ("≥ 1", lambda v: v >= 1),
    "target_class": ("≥ 0", lambda v: v >= 0),
    "queries": ("≥ 0", lambda v: v >= 0),
    "stop_iou": ("in [0, 1]", lambda v: 0 <= v <= 1),
}


def check_setting(key: str, value: Any) -> None:
    """Validate one attack setting (``None`` means its default); raises :class:`SettingError`.

    The one validation of ``adv2 attack``'s options and of an experiment file's attack keys.
    """
    if value is None:
        return
    registries = {"optimizer": OPTIMIZERS, "pred_loss": PREDICTION_LOSSES,
                  "map_loss": MAP_LOSSES, "attack": ATTACKS,
                  "target_map": target_maps_mod.KINDS, "threat": THREATS, "answers": ANSWERS}
    if key in registries and value not in registries[key]:
        raise SettingError(key, f"unknown value {value!r}; choose from {sorted(registries[key])}")
    if key == "support":
        try:
            support_mod.parse(str(value))
        except ValueError as exc:
            raise SettingError(key, str(exc)) from None
    if key == "lam":
        try:
            parse_schedule(str(value))
        except ValueError as exc:
            raise SettingError(key, f"bad λ schedule {value!r} ({exc})") from None
    if key == "device":
        try:
            torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise SettingError(key, f"{value!r} is not a torch device ({exc})") from None
    if key in _RANGES:
        what, ok = _RANGES[key]
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(key, f"must be a finite number, got {value}")
        if not ok(value):
            raise SettingError(key, f"must be {what}, got {value}")


@dataclass
class Pool:
    """The image set an ``other`` target map is drawn from: float N×3×H×W, labels, preds."""

    x: torch.Tensor
    labels: torch.Tensor
    preds: torch.Tensor


def target_maps_for(kind: str, interpreter: Interpreter, keys: list[str], seed: int,
                    targets: torch.Tensor, benign: torch.Tensor, pool: Pool | None,
                    size: int) -> torch.Tensor:
    """Each image's target map (N×1×h×w) of ``kind``, seeded per image (:func:`seed_of`)."""
    if kind == "benign":
        return benign
    maps = []
    batch_seeds = interpreter.seeds
    for j, key in enumerate(keys):
        image_seed = seed_of(seed, key)
        if kind == "shape":  # the same shape at each interpreter's resolution the maps hold
            parts = interpreter.parts(benign[j:j + 1], (size, size))
            maps.append(interpreter.join({
                n: target_maps_mod.shape(1, tuple(p.shape[-2:]), image_seed, size).to(benign)
                for n, p in parts.items()}))
        elif kind == "other":  # the pool image's map drawn with the attacked image's seed
            interpreter.use_seeds(None if batch_seeds is None else batch_seeds[j:j + 1].tolist())
            maps.append(target_maps_mod.other(interpreter, targets[j:j + 1], pool.x,
                                              pool.labels, image_seed, pool.preds))
        else:
            raise ValueError(f"unknown target map kind {kind!r}")
    interpreter.use_seeds(None if batch_seeds is None else batch_seeds.tolist())
    return torch.cat(maps)


def build_attack(cfg: AttackConfig, model: Classifier,
                 interpreter: Interpreter | None) -> Attack:
    """The attack ``cfg`` describes (its ``None`` settings filled with the defaults), built by
    its registry entry (:meth:`AttackSettings.build`; with ``cfg.adaptive``, its adaptive form).
    An attack that differentiates the interpreter refuses one that is not differentiable
    (ValueError naming it)."""
    cfg = cfg.resolved()
    if cfg.entry().differentiates:
        require_differentiable(cfg.interpreter)
    return AttackSettings.build(cfg, model, interpreter)


def attack_batch(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                 attack: Attack, images: np.ndarray, labels: torch.Tensor,
                 targets: torch.Tensor, names: list[str], pool: Pool | None) -> list[Output]:
    """Attack one batch: benign maps, target maps, the support, the attack, the judged
    outcome.

    Arguments:
        cfg: the settings (``target_map``, ``support``, ``seed``); attack: any attack (one call
        shape); images: uint8 N×H×W×3; labels, targets: (N,) long; names: the samples' names;
        pool: the images ``other`` target maps come from (only for those).

    Returns:
        Per image ``(arrays, meta)``: arrays ``adv`` (uint8), ``map``, ``benign``,
        ``target_map`` (h×w float32), ``support`` (H×W, with a support); meta ``label``,
        ``target``, ``pred``, ``confidence``, ``success``, ``l1``, ``iou`` (per k), ``passes``,
        ``linf`` (uint8 units), ``changed`` (the fraction of pixels changed), ``l2``
        (‖δ‖₂ in [0,1] units) and ``per_interpreter`` (``{name: {"l1", "iou", "shape"}}``
        of each interpreter the maps hold, ``shape`` its map's h×w,
        :func:`~adv2.attacks.result.distances`; ``l1`` and ``iou`` are their means). A
        stochastic interpreter attacks with each image's seed and
        is judged with another (:func:`~adv2.target_classes.interpreter_seeds`): ``map``,
        ``benign``, ``l1`` and ``iou`` are those of the judge's draws (against the target
        map the attack had unless it is the benign map, which is redrawn too); meta
        ``interpreter_seed`` and ``judge_seed`` record both. An image whose logits or maps are not finite is
        :class:`~adv2.records.Failed` instead: never a metric.
    """
    keys = [sample_key(n) for n in names]
    torch.manual_seed(seed_of(cfg.seed, keys[0]))
    device = model.device
    x, labels, targets = to_tensor(images).to(device), labels.to(device), targets.to(device)
    interpreter.use_seeds(interpreter_seeds(cfg.seed, keys))
    benign = target_maps_mod.benign(interpreter, x, labels)
    tmaps = target_maps_for(cfg.target_map, interpreter, keys, cfg.seed, targets, benign, pool,
                            images.shape[1])
    # a support drawn from the target map takes the first interpreter's it holds
    support = support_mod.build(cfg.support, x, next(iter(interpreter.parts(
        tmaps, tuple(x.shape[-2:])).values())), names)
    result = attack(x, targets, tmaps, support)
    if interpreter.stochastic:  # judged as a defender would: with draws the attack never saw
        interpreter.use_seeds(interpreter_seeds(cfg.seed, keys, judge=True))
        benign = target_maps_mod.benign(interpreter, x, labels)
        result = rejudged(interpreter, result, targets,
                          benign if cfg.target_map == "benign" else tmaps)
    delta = result.x.to(device) - x
    changed = (delta.abs().amax(dim=1) > 0).flatten(1).float().mean(dim=1).tolist()
    l2 = delta.flatten(1).norm(dim=1).tolist()
    finite = (torch.isfinite(result.confidence) & torch.isfinite(result.l1)
              & torch.isfinite(result.maps).flatten(1).all(1)
              & torch.isfinite(benign).flatten(1).all(1)
              & torch.isfinite(tmaps).flatten(1).all(1)).tolist()
    shapes = {n: list(p.shape[-2:]) for n, p in
              interpreter.parts(benign[:1], tuple(x.shape[-2:])).items()}
    maps, benign, tmaps = (m[:, 0].detach().cpu().numpy() for m in (result.maps, benign, tmaps))
    out: list[Output] = []
    for j in range(len(images)):
        if not finite[j]:
            out.append(Failed("non-finite logits or maps (NaN or infinity): the model or the "
                              "interpreter is broken for this image; no metric is reported"))
            continue
        meta = {"label": int(labels[j]), "target": int(targets[j]), "pred": int(result.pred[j]),
                "confidence": float(result.confidence[j].detach()),
                "success": bool(result.success[j]),
                "l1": float(result.l1[j]), "iou": result.iou[j].tolist(),
                "passes": int(result.passes[j]), "linf": int(result.linf[j]),
                "changed": changed[j], "l2": l2[j],
                "per_interpreter": {n: {"l1": float(d.l1[j]), "iou": d.iou[j].tolist(),
                                        "shape": shapes[n]}
                                    for n, d in result.per_interpreter.items()}}
        if result.queries is not None:
            meta["queries"] = int(result.queries[j])
        if interpreter.stochastic:
            meta["interpreter_seed"] = interpreter_seeds(cfg.seed, keys[j:j + 1])[0]
            meta["judge_seed"] = interpreter_seeds(cfg.seed, keys[j:j + 1], judge=True)[0]
        arrays = {"adv": result.adv[j], "map": maps[j], "benign": benign[j],
                  "target_map": tmaps[j]}
        if support is not None:
            arrays["support"] = support[j, 0].cpu().numpy()
        out.append((arrays, meta))
    return out


def rejudged(interpreter: Interpreter, result: AttackResult, targets: torch.Tensor,
             reference: torch.Tensor) -> AttackResult:
    """``result`` with the maps of ``interpreter`` (as seeded now) on its images and their L1
    and IoU to ``reference`` (N×1×h×w)."""
    with torch.no_grad():
        maps = target_maps_mod.benign(interpreter, result.x.to(reference.device),
                                      targets.to(reference.device))
    mean, parts = distances(interpreter, maps, reference, tuple(result.x.shape[-2:]))
    return replace(result, maps=maps, l1=mean.l1, iou=mean.iou, per_interpreter=parts)


def predict(model: Classifier, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Logits (N×C) of uint8 images, ``batch_size`` at a time."""
    with torch.no_grad():
        return torch.cat([model(to_tensor(images[i:i + batch_size]).to(model.device))
                          for i in range(0, len(images), batch_size)]).cpu()


def labels_of(samples: list[Sample], preds: torch.Tensor) -> torch.Tensor:
    """Each sample's label, or the model's prediction where it has none."""
    return torch.tensor([s.label if s.label is not None else int(p)
                         for s, p in zip(samples, preds.tolist())], device=preds.device)


def clean_accuracy(logits: torch.Tensor, labels: list[int | None], where: str) -> float | None:
    """Top-1 of the clean images whose label is known (None when none is); logged, with a loud
    warning below 50% (wrong weights or normalisation)."""
    known = [i for i, y in enumerate(labels) if y is not None]
    if not known:
        return None
    preds = logits.argmax(dim=1)[known].tolist()
    accuracy = sum(int(p == labels[i]) for p, i in zip(preds, known)) / len(known)
    log.info("%s: clean top-1 %.3f on the %d images with known labels", where, accuracy,
             len(known))
    if accuracy < 0.5:
        log.warning("%s: the model classifies only %.0f%% of the clean images correctly: are "
                    "the weights and normalisation right?", where, 100 * accuracy)
    return accuracy


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
    """
    start = time.time()
    interpreter = build_interpreter(cfg.interpreter, model, **cfg.interpreter_settings)
    if samples:
        images = np.stack([s.image for s in samples])
        logits = predict(model, images, cfg.batch_size)
        cfg.validate(logits.shape[1])  # before anything is written
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

        preds = logits.argmax(dim=1)
        accuracy = clean_accuracy(logits, [s.label for s in samples], str(out))
        finite = torch.isfinite(logits).all(dim=1).tolist()
        labels = labels_of(samples, preds)
        allowed = labels[preds == labels] if cfg.target_map == "other" else None
        tgts, why = per_image_targets([s.key for s in samples], labels, logits.shape[1], cfg.seed,
                                      cfg.target_class, allowed)
        for i, ok in enumerate(finite):
            if not ok:
                why[i] = "non-finite clean logits (NaN or infinity): the model is broken for it"
        for i, reason in why.items():
            log.error("skipping %s: %s", samples[i].name, reason)
            writer.error(samples[i].name, reason)
        attacked = [i for i in range(len(samples)) if i not in why]
        rows = {samples[i].name: i for i in attacked}
        writer.expect([samples[i].name for i in attacked])
        pool = (Pool(to_tensor(images).to(model.device), labels.to(model.device),
                     preds.to(model.device)) if cfg.target_map == "other" else None)

        def work(names: list[str]) -> list[Output]:
            index = [rows[n] for n in names]
            outputs = attack_batch(cfg, model, interpreter, attack, images[index], labels[index],
                                   tgts[index], names, pool)
            for i, output in zip(index, outputs):
                if not isinstance(output, Failed):
                    output[1]["clean_pred"] = int(preds[i])
            writer.save_samples(names, images[index], outputs, cfg.entry().display_name)
            return outputs

        run_units(Alone(), writer.store, "", chunks(list(rows), cfg.batch_size), work, progress,
                  {n: samples[i].digest for n, i in rows.items()}, after=writer.write_results)
        summary = writer.finish(time.time() - start, metrics.DEFAULT_KS, accuracy)
    log.info("%s/%s on %d images: success %.3f, L1 %.4f, IoU %.3f (%s)", cfg.attack,
             cfg.interpreter, summary["n_images"], summary["success_rate"] or 0,
             summary["l1_mean"] or 0, summary["iou_mean"] or 0, out)
    return summary
