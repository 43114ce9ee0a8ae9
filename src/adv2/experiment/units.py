"""Units of work: fixed chunks of the image list, sharded over ranks, recorded as they finish."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from adv2.experiment import distributed
from adv2.experiment.store import Store

log = logging.getLogger(__name__)

#: one unit of work produces, per image, (arrays, meta)
Output = tuple[dict[str, np.ndarray], dict]


def chunks(names: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of ``size`` names: the units of work, independent of the number of
    processes."""
    return [names[i:i + size] for i in range(0, len(names), size)]


def run_units(ctx: distributed.Context, store: Store, stage: str, units: list[list[str]],
              work: Callable[[list[str]], list[Output]], progress: bool) -> None:
    """Run this rank's share of ``units`` not yet recorded in ``stage``; a unit that raises is
    recorded as an error for each of its images and the stage goes on."""
    mine = ctx.shard(units)
    todo = [u for u in mine if not all(store.done(stage, n) for n in u)]
    total = sum(len(u) for u in mine)
    bar = tqdm(total=total, initial=total - sum(len(u) for u in todo), desc=stage, unit="img",
               disable=not (progress and ctx.main), dynamic_ncols=True)
    for unit in todo:
        try:
            outputs = work(unit)
        except Exception as exc:
            log.exception("%s: %s failed", stage, unit)
            for name in unit:
                store.save_error(stage, name, f"{type(exc).__name__}: {exc}")
        else:
            for name, (arrays, meta) in zip(unit, outputs):
                store.save(stage, name, arrays, meta)
        bar.update(len(unit))
    bar.close()
