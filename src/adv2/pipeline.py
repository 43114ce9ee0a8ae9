"""Attack a set of images end to end: targets, target maps, attack, judging, output folder."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adv2 import metrics, targets as target_maps_mod
from adv2.attacks import (ADV2, MAP_LOSSES, OPTIMIZERS, PGD, PREDICTION_LOSSES, Linear,
                          MarginStepSearch, parse_schedule)
from adv2.data import Sample, to_tensor
from adv2.detection import FeatureSqueezingDetector
from adv2.detection.adaptive import AdaptiveADV2
from adv2.interpreters import Interpreter, build_interpreter
from adv2.models import Classifier
from adv2.report import RunWriter

log = logging.getLogger(__name__)


@dataclass
class AttackConfig:
    """Every setting of an attack run (saved as config.json). ``None`` means the attack's
    default for the interpreter (:data:`ATTACK_DEFAULTS`); :meth:`resolved` fills them in."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    interpreter: str = "cam"
    attack: str = "adv2"
    eps: float = 8 / 255
    steps: int | None = None
    warm_steps: int | None = None
    lam: str | None = None  # schedule text, see adv2.attacks.parse_schedule
    optimizer: str | None = None
    lr: float | None = None
    lr_decay: float | None = None  # step size at the end relative to the start (linear)
    pred_loss: str | None = None
    map_loss: str | None = None
    patience: int | None = None  # 0: never stop early
    random_start: bool = False
    target_class: int | None = None
    target_map: str = "benign"
    batch_size: int = 8
    seed: int = 0
    adaptive: str | None = None  # thresholds JSON from `adv2 detect fit`: ADV² evades them
    rts_checkpoint: str | None = None  # RTS: a checkpoint of `adv2 train-rts` (default: shipped)
    #: interpreter settings other than the defaults (keyword arguments of its class, e.g.
    #: MASK's attack ``strategy``)
    interpreter_settings: dict = field(default_factory=dict)
    step_search: bool | None = None  # ADV²: per-example step-length search keeping the target

    def resolved(self) -> "AttackConfig":
        defaults = ATTACK_DEFAULTS["pgd"] if self.attack == "pgd" else ATTACK_DEFAULTS.get(
            self.interpreter, ATTACK_DEFAULTS["cam"])
        if self.attack == "adv2" and self.adaptive is not None:
            defaults = {**defaults, **ADAPTIVE_DEFAULTS}
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **filled)


#: per-attack / per-interpreter defaults, measured in docs/benchmark.md
ATTACK_DEFAULTS: dict[str, dict] = {
    "pgd": {"steps": 100, "optimizer": "sign", "lr": 1 / 255, "pred_loss": "ce"},
    "cam": {"steps": 110, "warm_steps": 50, "optimizer": "adam", "lr": 2 / 255, "lr_decay": 1.0,
            "lam": "5:10", "pred_loss": "ce", "map_loss": "mse", "patience": 20,
            "step_search": False},
    # GRAD's fast surrogate makes a step ~3.5 PGD steps: 400 steps fit the time 130 took before
    "grad": {"steps": 400, "warm_steps": 30, "optimizer": "adam", "lr": 0.004, "lr_decay": 0.05,
             "lam": "50", "pred_loss": "cw", "map_loss": "mse", "patience": 0,
             "step_search": False},
    # RTS maps are sigmoids with most cells near 0 or 1: the logit MSE keeps their order (IoU)
    "rts": {"steps": 160, "warm_steps": 50, "optimizer": "adam", "lr": 2 / 255, "lr_decay": 1.0,
            "lam": "2:4", "pred_loss": "ce", "map_loss": "logit", "patience": 30,
            "step_search": False},
    "mask": {"steps": 100, "warm_steps": 50, "optimizer": "adam", "lr": 1 / 255, "lr_decay": 1.0,
             "lam": "5:10", "pred_loss": "ce", "map_loss": "mse", "patience": 20,
             "step_search": True},
}

#: the joint stage of adaptive ADV² (``adaptive`` set): longer, and no early stop (see
#: :class:`~adv2.detection.adaptive.AdaptiveADV2`)
ADAPTIVE_DEFAULTS: dict = {"steps": AdaptiveADV2.steps, "patience": 0}


def choose_targets(labels: torch.Tensor, n_classes: int, seed: int, fixed: int | None,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Target classes: ``fixed`` for all, or uniform over classes ≠ label (over ``allowed``
    classes when given) from ``numpy.random.default_rng(seed)``."""
    if fixed is not None:
        return torch.full_like(labels, fixed)
    rng = np.random.default_rng(seed)
    pool = np.arange(n_classes) if allowed is None else np.unique(allowed.numpy())
    out = []
    for y in labels.tolist():
        choices = pool[pool != y]
        if choices.size == 0:
            raise ValueError("no target class different from the label is available")
        out.append(int(rng.choice(choices)))
    return torch.tensor(out)


def build_attack(
    cfg: AttackConfig, model: Classifier, interpreter: Interpreter
) -> PGD | ADV2 | AdaptiveADV2:
    """The attack ``cfg`` describes (its ``None`` settings filled with the defaults); with
    ``cfg.adaptive``, ADV² that also evades the feature-squeezing detector fitted in that file."""
    cfg = cfg.resolved()
    if cfg.adaptive is not None:
        if cfg.attack != "adv2":
            raise ValueError("--adaptive applies to --attack adv2")
        detector = FeatureSqueezingDetector.load(model, cfg.adaptive)
        return AdaptiveADV2(build_attack(replace(cfg, adaptive=None), model, interpreter),
                            detector, steps=cfg.steps, patience=cfg.patience or None)
    if cfg.attack == "pgd":
        if cfg.optimizer != "sign":
            raise ValueError("PGD takes sign steps; --optimizer applies to ADV² only")
        return PGD(model, eps=cfg.eps, steps=cfg.steps, step_size=cfg.lr,
                   random_start=cfg.random_start, seed=cfg.seed,
                   loss=PREDICTION_LOSSES[cfg.pred_loss]())
    if cfg.attack == "adv2":
        return ADV2(
            model, interpreter, eps=cfg.eps, steps=cfg.steps, lam=parse_schedule(cfg.lam),
            pred_loss=PREDICTION_LOSSES[cfg.pred_loss](),
            map_loss=MAP_LOSSES[cfg.map_loss](),
            optimizer=OPTIMIZERS[cfg.optimizer](lr=cfg.lr),
            step_scale=None if cfg.lr_decay == 1.0 else Linear(1.0, cfg.lr_decay),
            warm_steps=cfg.warm_steps, patience=cfg.patience or None,
            step_search=MarginStepSearch() if cfg.step_search else None,
        )
    raise ValueError(f"unknown attack {cfg.attack!r}; choose pgd or adv2")


def run(
    cfg: AttackConfig,
    model: Classifier,
    samples: list[Sample],
    out: str | Path,
    load_errors: list[tuple[str, str]] = (),
    progress: bool = True,
) -> dict:
    """Attack ``samples`` and write the output folder ``out``; returns the summary.

    Images without a label take the model's prediction as their label. A batch that fails is
    recorded with its error in summary.json and the run goes on.
    """
    torch.manual_seed(cfg.seed)
    start = time.time()
    interpreter = build_interpreter(cfg.interpreter, model, cfg.rts_checkpoint,
                                    **cfg.interpreter_settings)
    writer = RunWriter(out, asdict(cfg.resolved()) | {"interpreter_config": interpreter.config()})
    for file, message in load_errors:
        writer.error(file, message)
    if not samples:
        log.error("no readable images to attack")
        return writer.finish(time.time() - start, metrics.DEFAULT_KS)

    images = np.stack([s.image for s in samples])
    x = to_tensor(images)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + cfg.batch_size])
                            for i in range(0, len(x), cfg.batch_size)])
    preds = logits.argmax(dim=1)
    labels = torch.tensor([s.label if s.label is not None else int(p)
                           for s, p in zip(samples, preds)])
    allowed = labels[preds == labels] if cfg.target_map == "other" else None
    tgts = choose_targets(labels, logits.shape[1], cfg.seed, cfg.target_class, allowed)
    trivial = (tgts == labels).tolist()
    for sample, skip in zip(samples, trivial):
        if skip:
            log.error("skipping %s: its label is the target class %d", sample.name,
                      cfg.target_class)
            writer.error(sample.name, f"label equals the target class {cfg.target_class}")
    if any(trivial):
        rows = [i for i, skip in enumerate(trivial) if not skip]
        samples = [samples[i] for i in rows]
        images, x, labels = images[rows], x[rows], labels[rows]
        preds, tgts = preds[rows], tgts[rows]
    attack = build_attack(cfg, model, interpreter)
    size = x.shape[-2:]
    resolution = interpreter.resolution(*size)

    bar = tqdm(total=len(samples), desc=f"{cfg.attack}/{cfg.interpreter}", unit="img",
               disable=not progress)
    for lo in range(0, len(samples), cfg.batch_size):
        rows = slice(lo, lo + cfg.batch_size)
        names = [s.name for s in samples[rows]]
        try:
            benign = target_maps_mod.benign(interpreter, x[rows], labels[rows])
            if cfg.target_map == "benign":
                tmaps = benign
            elif cfg.target_map == "other":
                tmaps = target_maps_mod.other(interpreter, tgts[rows], x, labels,
                                              cfg.seed + lo, preds)
            elif cfg.target_map == "shape":
                tmaps = target_maps_mod.shape(len(names), resolution, cfg.seed + lo, size[-1])
            else:
                raise ValueError(f"unknown target map kind {cfg.target_map!r}")
            if isinstance(attack, PGD):
                result = attack(images[rows], tgts[rows], interpreter, tmaps)
            else:
                result = attack(images[rows], tgts[rows], tmaps)
            writer.add(names, images[rows], labels[rows], tgts[rows], result, benign, tmaps,
                       cfg.attack.upper() if cfg.attack == "pgd" else "ADV²")
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            log.exception("batch %s failed", names)
            for name in names:
                writer.error(name, f"{type(exc).__name__}: {exc}")
        bar.update(len(names))
    bar.close()
    summary = writer.finish(time.time() - start, metrics.DEFAULT_KS)
    log.info("%s/%s on %d images: success %.3f, L1 %.4f, IoU %.3f (%s)", cfg.attack,
             cfg.interpreter, summary["n_images"], summary["success_rate"] or 0,
             summary["l1_mean"] or 0, summary["iou_mean"] or 0, out)
    return summary
