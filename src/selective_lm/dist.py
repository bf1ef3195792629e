"""Distributed helpers. torchrun's environment decides whether a run is distributed.

All parallelism lives in :func:`parallelize`, outside the model; the training loop only calls
:func:`all_reduce_sum` on its global token counts and :func:`is_main` before writing files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> None:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op when not distributed); stays on device."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def parallelize(model, device: torch.device, compile: bool = False):
    """Apply compile and data parallelism; returns the module to run forward through.

    The model passed in stays the one to save, evaluate and count.
    """
    if compile:
        model = torch.compile(model)
    if dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        model = DDP(model, device_ids=ids)
    return model


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)
