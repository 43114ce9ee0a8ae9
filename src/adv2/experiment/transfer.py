"""The transfer study: ADV² images made against one interpreter, explained by every interpreter.

For a source interpreter A (one ADV² attacks: :meth:`ExperimentConfig.adv2_interpreters`) and a
target interpreter B (any, differentiable or not), the map B gives the ADV² image made against A
(for the target class) is compared with B's benign map of the clean image (L1 and top-k IoU, as
in the attack tables; for a joint B, ``cam+grad``, their means over its members). A stochastic
B explains with the judge's seeds of its attack records
(:func:`~adv2.target_classes.interpreter_seeds`), the draws of its stored benign maps, so the
diagonal (A = B) is the attack's own result.
"""

from __future__ import annotations

import numpy as np
import torch

from adv2.attacks.criteria import TargetPredicted
from adv2.attacks.result import distances
from adv2.data import sample_key, to_tensor
from adv2.experiment import distributed
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.interpreters import Interpreter
from adv2.outcome import Outcome
from adv2.records import Entry, Failed, Store, chunks, downstream_digests, run_units
from adv2.target_classes import interpreter_seeds


def stage(source: str, target: str) -> str:
    return f"transfer/{source}-to-{target}"


def benign_stage(cfg: ExperimentConfig, interpreter: str) -> str:
    """The attack stage whose records hold ``interpreter``'s benign maps: its ADV² records,
    or its PGD records where ADV² skips it (every attack records the same benign maps)."""
    return f"{interpreter}/{'adv2' if 'adv2' in cfg.attacks_for(interpreter) else 'pgd'}"


def transfer_unit(store: Store, source: str, interpreter: Interpreter, reference: str,
                  seed: int, names: list[str]) -> list[Entry | Failed]:
    """Explain the source's ADV² images of ``names`` with ``interpreter`` (on its model's
    device, seeded with the judge's seeds of the experiment ``seed``); compare with its benign
    maps, from the records of the stage ``reference``. Raises when a source or benign record
    is missing or failed."""
    sources, references = [], []
    for name in names:
        src = store.load(f"{source}/adv2", name)
        ref = store.load(reference, name)
        for what, record in (("source ADV² image", src), ("benign map", ref)):
            if record is None or record.error is not None:
                raise RuntimeError(f"no {what} for {name}: "
                                   f"{record.error if record else 'record missing'}")
        sources.append(Outcome.from_record(src))
        references.append(Outcome.from_record(ref))
    device = interpreter.model.device
    x = to_tensor(np.stack([o.adv for o in sources])).to(device)
    targets = torch.tensor([o.target for o in sources], device=device)
    interpreter.use_seeds(interpreter_seeds(seed, [sample_key(n) for n in names], judge=True))
    with torch.no_grad():  # GRAD enables the gradient it needs inside explain
        logits, maps = interpreter.explain(x, targets)
    success = TargetPredicted()(x, logits, targets, torch.arange(len(x), device=device)).cpu()
    maps = maps.cpu()
    benign_maps = torch.from_numpy(np.stack([o.benign for o in references])).unsqueeze(1)
    mean, _ = distances(interpreter, maps, benign_maps, tuple(x.shape[-2:]))
    l1, iou = mean.l1, mean.iou
    finite = (torch.isfinite(maps).flatten(1).all(1) & torch.isfinite(l1)
              & torch.isfinite(iou).all(1)).tolist()
    return [Entry({"map": maps[j, 0].numpy()},
                  {"l1": float(l1[j]), "iou": iou[j].tolist(), "success": bool(success[j])})
            if finite[j] else Failed("non-finite transferred map (NaN or infinity)")
            for j in range(len(names))]


def run(ctx: distributed.Context, cfg: ExperimentConfig, interpreters: dict[str, Interpreter],
        store: Store, data: ImageSet, progress: bool) -> None:
    """Every (source, target) pair, on every attacked image: the sources are the interpreters
    ADV² attacks, the targets all of them."""
    units = chunks(data.attacked, cfg.batch_size)
    for target, interpreter in interpreters.items():
        reference = benign_stage(cfg, target)
        for source in cfg.adv2_interpreters():
            run_units(ctx, store, stage(source, target), units,
                      lambda u, s=source, i=interpreter, r=reference:
                      transfer_unit(store, s, i, r, cfg.seed, u), progress,
                      downstream_digests(store, data.digests, [f"{source}/adv2", reference]))
