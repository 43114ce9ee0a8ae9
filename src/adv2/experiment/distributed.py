"""Sharding over processes with torch.distributed (``torchrun --nproc_per_node=N``).

Work is cut into fixed units (chunks of the image list) that do not depend on the number of
processes; unit i goes to rank i mod N. Processes share the run directory (one machine, or a
shared file system across machines) and only synchronise at barriers; rank 0 merges the
per-image records into the report. The process group uses gloo: it only carries barriers, and
the ranks may compute on CPUs or GPUs (see :meth:`Context.device`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how long a rank waits at a barrier for the slowest one (a failed rank ends the job sooner:
#: torchrun stops the others)
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass
class Context:
    """This process's ``rank`` among ``world`` processes."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, units: Sequence[T]) -> list[T]:
        """This rank's units: every ``world``-th, starting at ``rank``."""
        return list(units[self.rank::self.world])

    def device(self, device: str) -> str:
        """This rank's torch device for the configured ``device``: a bare ``cuda`` becomes
        ``cuda:LOCAL_RANK`` when several processes run (one GPU per rank), else stays as is."""
        if device == "cuda" and self.world > 1:
            return f"cuda:{os.environ.get('LOCAL_RANK', self.rank)}"
        return device

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def init() -> Context:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context()
    if not dist.is_available() or not dist.is_gloo_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build lacks torch.distributed/gloo")
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    ctx = Context(dist.get_rank(), dist.get_world_size(), owns_group=True)
    log.debug("rank %d of %d joined the gloo process group", ctx.rank, ctx.world)
    return ctx
