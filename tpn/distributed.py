"""Process-group plumbing for `torchrun` launches (one process per GPU, or gloo on CPU).

Rank, world size and rendezvous come from the environment torchrun sets
(`env://`), so multi-node runs use torchrun's own rendezvous and nothing
here knows about hosts or ports. A plain `python -m ...` run is world size 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_environ(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """The launch as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); defaults mean one process."""
    try:
        return DistEnv(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None


def resolve_torch_device(spec: str, env: DistEnv) -> torch.device:
    """Where the model runs: 'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch.device (made current).

    Under torchrun, 'cuda' means this rank's GPU (LOCAL_RANK). The loader's
    device is another question, answered by `pipeline.clips.loader.resolve_loader_device`.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:  # torch's message lists every device type it knows
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {spec} asked for a GPU but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device: torch.device, env: DistEnv, *, cuda_graphs: bool = False) -> None:
    """Join the process group torchrun prepared: NCCL on GPUs, gloo on CPU."""
    if not env.distributed or dist.is_initialized():
        return
    if device.type == "cuda" and cuda_graphs:
        # Whole-step capture with DDP needs NCCL's async error handling off
        # (PyTorch CUDA-graph notes); a user's explicit setting wins.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method="env://", **kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (pickled; for small results only)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place mean across ranks (a no-op for one process)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= env.world_size
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
