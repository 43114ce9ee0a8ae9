"""The attack of one batch and its judgement: :func:`attack_batch`, the one batch body of
``adv2 attack``, ``adv2 run``, the demo and the benchmarks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from adv2 import target_maps
from adv2.attack_config import AttackConfig
from adv2.attack_maps import Pool, target_maps_for
from adv2.attacks import Attack
from adv2.attacks import support as support_mod
from adv2.attacks.draws import Seeded
from adv2.attacks.result import AttackResult, distances
from adv2.data import sample_key, to_tensor
from adv2.interpreters import Interpreter
from adv2.models import Classifier
from adv2.outcome import Distance, Outcome, Seeds
from adv2.records import Failed
from adv2.target_classes import attack_seeds, interpreter_seeds, seed_of


def attack_batch(cfg: AttackConfig, model: Classifier, interpreter: Interpreter,
                 attack: Attack, images: np.ndarray, labels: torch.Tensor,
                 targets: torch.Tensor, names: list[str],
                 pool: Pool | None) -> list[Outcome | Failed]:
    """Attack one batch: benign maps, target maps, the support, the attack, the judged
    outcome.

    Arguments:
        cfg: the settings (``target_map``, ``support``, ``seed``); attack: any attack (one call
        shape); images: uint8 N×H×W×3; labels, targets: (N,) long; names: the samples' names;
        pool: the images ``other`` target maps come from (only for those).

    Returns:
        Per image its :class:`~adv2.outcome.Outcome`: the judged distances of the map to the
        target map, for each interpreter the maps hold (:func:`~adv2.attacks.result.distances`;
        ``l1`` and ``iou`` are their means). A stochastic interpreter attacks with each image's
        seed and is judged with another (:func:`~adv2.target_classes.interpreter_seeds`, the
        outcome's ``seeds``): ``map``, ``benign``, ``l1`` and ``iou`` are those of the judge's
        draws (against the target map the attack had unless it is the benign map, which is
        redrawn too). An attack that draws at random (:class:`~adv2.attacks.draws.Seeded`)
        draws from each image's :func:`~adv2.target_classes.attack_seeds`. An image whose
        logits or maps are not finite is :class:`~adv2.records.Failed` instead: never a
        metric.
    """
    keys = [sample_key(n) for n in names]
    torch.manual_seed(seed_of(cfg.seed, keys[0]))
    device = model.device
    x, labels, targets = to_tensor(images).to(device), labels.to(device), targets.to(device)
    interpreter.use_seeds(interpreter_seeds(cfg.seed, keys))
    benign = target_maps.benign(interpreter, x, labels)
    tmaps = target_maps_for(cfg.target_map, interpreter, keys, cfg.seed, targets, benign, pool,
                            images.shape[1])
    # a support drawn from the target map takes the first interpreter's it holds
    support = support_mod.build(cfg.support, x, next(iter(interpreter.parts(
        tmaps, tuple(x.shape[-2:])).values())), names)
    if isinstance(attack, Seeded):  # its own draws (a random start, a search): per image
        attack.use_seeds(attack_seeds(cfg.seed, keys))
    result = attack(x, targets, tmaps, support)
    if interpreter.stochastic:  # judged as a defender would: with draws the attack never saw
        interpreter.use_seeds(interpreter_seeds(cfg.seed, keys, judge=True))
        benign = target_maps.benign(interpreter, x, labels)
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
    seeds = ([Seeds(*pair) for pair in zip(interpreter_seeds(cfg.seed, keys),
                                           interpreter_seeds(cfg.seed, keys, judge=True))]
             if interpreter.stochastic else [None] * len(images))
    out: list[Outcome | Failed] = []
    for j in range(len(images)):
        if not finite[j]:
            out.append(Failed("non-finite logits or maps (NaN or infinity): the model or the "
                              "interpreter is broken for this image; no metric is reported"))
            continue
        out.append(Outcome(
            label=int(labels[j]), target=int(targets[j]), pred=int(result.pred[j]),
            confidence=float(result.confidence[j].detach()), success=bool(result.success[j]),
            l1=float(result.l1[j]), iou=result.iou[j].tolist(), passes=int(result.passes[j]),
            linf=int(result.linf[j]), changed=changed[j], l2=l2[j],
            per_interpreter={n: Distance(float(d.l1[j]), d.iou[j].tolist(), shapes[n])
                             for n, d in result.per_interpreter.items()},
            adv=result.adv[j], map=maps[j], benign=benign[j], target_map=tmaps[j],
            support=None if support is None else support[j, 0].cpu().numpy(),
            queries=None if result.queries is None else int(result.queries[j]), seeds=seeds[j]))
    return out


def rejudged(interpreter: Interpreter, result: AttackResult, targets: torch.Tensor,
             reference: torch.Tensor) -> AttackResult:
    """``result`` with the maps of ``interpreter`` (as seeded now) on its images and their L1
    and IoU to ``reference`` (N×1×h×w)."""
    with torch.no_grad():
        maps = target_maps.benign(interpreter, result.x.to(reference.device),
                                  targets.to(reference.device))
    mean, parts = distances(interpreter, maps, reference, tuple(result.x.shape[-2:]))
    return replace(result, maps=maps, l1=mean.l1, iou=mean.iou, per_interpreter=parts)
