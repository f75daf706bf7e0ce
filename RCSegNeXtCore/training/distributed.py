"""Data-parallel training with torch.distributed (DDP): `torchrun --nproc_per_node N` or `--gpus N`.

Each rank samples its own patches (rank-dependent seeds); gradients are averaged by DDP; only rank 0 writes
checkpoints, metrics and logs. CUDA uses NCCL, CPU uses gloo (how the tests run it: 2 CPU processes).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, List

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str) -> DistInfo:
    """Join the process group described by the environment (torchrun or `spawn_workers`); no-op for one process."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    """Every rank's `obj` (e.g. its RNG states, so rank 0 can checkpoint them all)."""
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    fn(*args)


def spawn_workers(world_size: int, fn: Callable, *args: Any) -> None:
    """Run `fn(*args)` in `world_size` processes forming one process group (what `--gpus N` does)."""
    import torch.multiprocessing as mp
    mp.start_processes(_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True,
                       start_method="spawn")
