"""Multi-process training under ``torchrun``: process group, rank helpers, sharded sampling.

``torchrun --nproc_per_node N`` starts N copies of the training command and tells each
its place through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` > 1 the
trainers join one process group (NCCL on GPUs, Gloo on CPUs), wrap their model in
:class:`~torch.nn.parallel.DistributedDataParallel` and train on disjoint shards of each
epoch; rank 0 alone validates and writes the run folder. Without torchrun (or with one
process) every helper here is a no-op, so a single-process run is unchanged.

Each process keeps the configured batch size: the effective batch is
``batch_size x world size``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import WeightedRandomSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launch_env() -> LaunchEnv:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them."""
    return LaunchEnv(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init(device: torch.device, timeout_minutes: float = 60) -> torch.device:
    """Join the torchrun process group when launched with ``WORLD_SIZE`` > 1.

    The backend is NCCL when ``device`` is a CUDA device (and CUDA is available), else
    Gloo. On GPUs each process takes ``cuda:LOCAL_RANK``. The generous timeout covers
    rank 0 validating or exporting while the others wait.

    Args:
        device: the device the config asks for (``cpu``, ``cuda``…).

    Returns:
        The device this process trains on; ``device`` itself in a single-process run.

    Raises:
        RuntimeError: more processes on this node than visible GPUs.
    """
    env = launch_env()
    if env.world_size <= 1:
        return device
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), device_id=device if cuda else None)
        log.info("rank %d of %d (%s) on %s", dist.get_rank(), dist.get_world_size(), backend, device)
    return device


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the active process group (1 without one)."""
    return _group_size()


def rank() -> int:
    """Rank in the active process group (0 without one)."""
    return _group_rank()


def _group_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _group_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes outputs: global rank 0, or the only process.

    Also answers correctly in a torchrun launch before :func:`init` or after
    :func:`cleanup`, from ``RANK``.
    """
    return dist.get_rank() == 0 if dist.is_initialized() else launch_env().rank == 0


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0, then on the first process of every other node, then on the rest.

    Made for filling a disk cache: rank 0 fills it; on a filesystem the nodes share the
    others only read it, and on per-node disks one process per node fills its own, so two
    processes never write the same file.
    """
    stage = 0 if is_main() else 1 if launch_env().local_rank == 0 else 2
    for _ in range(stage):
        barrier()
    yield
    for _ in range(stage, 2):
        barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` (e.g. a loss total and a sample count) over all processes.

    Returns the values unchanged in a single-process run. ``device`` must be the
    process's CUDA device under NCCL.
    """
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable objects; ``obj`` itself without a group)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(value: Any, what: str) -> None:
    """Raise when ``value`` differs from rank 0's: the processes would otherwise deadlock.

    Raises:
        RuntimeError: naming ``what`` and both values.
    """
    ref = broadcast(value)
    if ref != value:
        raise RuntimeError(
            f"rank {rank()} has {what} {value!r} but rank 0 has {ref!r}; every node must see the same run folder "
            "(put --out on a shared filesystem)"
        )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else unchanged."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (``model`` otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices``: every ``world_size``-th one, starting at ``rank``."""
    return list(indices[rank::world_size])


def weighted_shard(
    weights: np.ndarray, per_rank: int, seed: int, rank: int | None = None, world_size: int | None = None
) -> list[int]:
    """This rank's share of one epoch of weighted draws with replacement.

    Every rank draws the same ``per_rank x world_size`` indices from a generator seeded with
    ``seed``, then keeps its :func:`shard`; the shards are disjoint positions of one draw.
    With one process the indices are those a ``WeightedRandomSampler`` with that seed yields.

    Args:
        weights: per-sample draw weights (need not sum to 1).
        per_rank: draws per process.
        seed: the epoch's seed, the same on every rank.
        rank, world_size: default to the active process group's.
    """
    rank = _group_rank() if rank is None else rank
    world_size = _group_size() if world_size is None else world_size
    draws = WeightedRandomSampler(
        weights, per_rank * world_size, replacement=True, generator=torch.Generator().manual_seed(seed)
    )
    return shard(list(draws), rank, world_size)
