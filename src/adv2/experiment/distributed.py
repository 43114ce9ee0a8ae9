"""Sharding over processes with torch.distributed (``torchrun --nproc_per_node=N``).

Work is cut into fixed units (chunks of the image list) that do not depend on the number of
processes; unit i goes to rank i mod N. Processes share the run directory (one machine, or a
shared file system across machines) and only synchronise at barriers; rank 0 holds the
directory's lock (:mod:`adv2.lock`) for the whole job and merges the per-image records into the
report. The process group only carries barriers: NCCL when the
ranks compute on CUDA devices (one per rank, :meth:`Context.device`), gloo otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
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
    backend: str = "gloo"

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
        if self.world > 1 and self.backend == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        elif self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def init(cuda: bool = False) -> Context:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else run alone; NCCL
    when the ranks compute on CUDA devices (``cuda``) and it is available, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build lacks torch.distributed")
    backend = "nccl" if cuda and torch.cuda.is_available() and dist.is_nccl_available() \
        else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build lacks gloo")
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), backend=dist.get_backend())
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    ctx = Context(dist.get_rank(), dist.get_world_size(), owns_group=True, backend=backend)
    log.debug("rank %d of %d joined the %s process group", ctx.rank, ctx.world, backend)
    return ctx
