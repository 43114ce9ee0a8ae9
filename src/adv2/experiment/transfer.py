"""The transfer study: ADV² images made against one interpreter, explained by every interpreter.

For a source interpreter A and a target interpreter B, the map B gives the ADV² image made
against A (for the target class) is compared with B's benign map of the clean image (L1 and
top-k IoU, as in the attack tables). The diagonal (A = B) is the attack's own result.
"""

from __future__ import annotations

import numpy as np
import torch

from adv2 import metrics
from adv2.data import to_tensor
from adv2.experiment import distributed
from adv2.experiment.config import ExperimentConfig
from adv2.experiment.images import ImageSet
from adv2.records import Output, Store, chunks, run_units
from adv2.interpreters import Interpreter


def stage(source: str, target: str) -> str:
    return f"transfer/{source}-to-{target}"


def transfer_unit(store: Store, source: str, interpreter: Interpreter,
                  names: list[str]) -> list[Output]:
    """Explain the source's ADV² images of ``names`` with ``interpreter``; compare with its
    benign maps. Raises when a source or benign record is missing or failed."""
    adv, benign, tgts = [], [], []
    for name in names:
        src = store.load(f"{source}/adv2", name)
        ref = store.load(f"{interpreter.name}/adv2", name)
        for what, record in (("source ADV² image", src), ("benign map", ref)):
            if record is None or record.error is not None:
                raise RuntimeError(f"no {what} for {name}: "
                                   f"{record.error if record else 'record missing'}")
        adv.append(src.arrays["adv"])
        benign.append(ref.arrays["benign"])
        tgts.append(src.meta["target"])
    targets = torch.tensor(tgts)
    with torch.no_grad():  # GRAD enables the gradient it needs inside explain
        logits, maps = interpreter.explain(to_tensor(np.stack(adv)), targets)
    benign_maps = torch.from_numpy(np.stack(benign)).unsqueeze(1)
    l1 = metrics.l1(maps, benign_maps)
    iou = metrics.iou(maps, benign_maps)
    success = metrics.success(logits, targets)
    return [({"map": maps[j, 0].numpy()},
             {"l1": float(l1[j]), "iou": iou[j].tolist(), "success": bool(success[j])})
            for j in range(len(names))]


def run(ctx: distributed.Context, cfg: ExperimentConfig, interpreters: dict[str, Interpreter],
        store: Store, data: ImageSet, progress: bool) -> None:
    """Every (source, target) pair of the configured interpreters, on every attacked image."""
    units = chunks(data.attacked, cfg.batch_size)
    for target, interpreter in interpreters.items():
        for source in interpreters:
            run_units(ctx, store, stage(source, target), units,
                      lambda u, s=source, i=interpreter: transfer_unit(store, s, i, u),
                      progress, data.digests)
