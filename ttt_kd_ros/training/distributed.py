"""torch.distributed for training: where a process sits in a job, and the few collectives training needs.

``init_distributed`` reads torchrun's environment, so one command line scales
from one CPU process to many GPUs on many nodes (NCCL on CUDA, gloo on CPU);
nothing here replaces torch.distributed, it only names what training asks of it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process sits in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """A DistContext from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).

    device: "auto" (CUDA when present), "cpu" or "cuda". Backend nccl on CUDA,
    gloo on CPU. One process without WORLD_SIZE runs undistributed.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (a CPU-only torch, or no driver): use --device cpu "
                         "or install a CUDA build of torch")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


def shard_indices(num_items: int, rank: int, world_size: int) -> list[int]:
    """Items rank, rank + world, ... padded by wrapping around so every rank gets ceil(n / world) of them."""
    if num_items <= 0:
        raise ValueError(f"num_items: expected > 0, got {num_items}")
    per_rank = math.ceil(num_items / world_size)
    return [(rank + world_size * i) % num_items for i in range(per_rank)]


def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Mean of the float buffers (BN running statistics) over ranks; integer ones from rank 0.

    DDP broadcasts rank 0's buffers before each forward, but every rank's last
    forward updates its own copy; averaging at the end of an epoch leaves all
    ranks identical and the statistics cover every rank's scans.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(ctx.world_size)
        else:
            dist.broadcast(buffer, src=0)


def wait_for_all_ranks(ctx: DistContext) -> None:
    """Every rank waits here until all arrive (nothing when not distributed).

    Why: rank 0 validates and writes checkpoints after each epoch while the other ranks would run into the next
    epoch's first all-reduce and sit in it past NCCL's timeout on a long validation; a barrier after rank 0's
    work keeps every rank in step (and no rank reads a checkpoint rank 0 is still writing).
    """
    if not ctx.distributed:
        return
    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.local_rank])
    else:
        dist.barrier()


def max_over_ranks(value: int, ctx: DistContext) -> int:
    """The largest ``value`` any rank holds (itself when not distributed): ranks pad to it to run equal steps."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum of a CPU float64 tensor over ranks (a copy of it when not distributed)."""
    if not ctx.distributed:
        return values.clone()
    moved = values.to(ctx.device) if ctx.device.type == "cuda" else values.clone()
    dist.all_reduce(moved)
    return moved.cpu()
