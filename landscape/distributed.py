"""torch.distributed for the toolkit: join torchrun's process group, and know this process's rank.

Grids (surfaces, eigenvalue maps) shard their chunks over ranks; see :mod:`landscape.grid`.
NCCL on GPUs (one per local rank), gloo on the CPU. Without torchrun's environment nothing
here starts a process group and every function answers as a single process.
"""
from __future__ import annotations

import os

import torch


def init_distributed(device: str = "auto") -> tuple[int, int, str]:
    """Join the torchrun process group when launched by torchrun; return ``(rank, world, device)``.

    NCCL on GPUs (one per local rank), gloo on the CPU. Without torchrun's environment this
    does nothing and returns ``(0, 1, device)``.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    return dist.get_rank(), dist.get_world_size(), device


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
