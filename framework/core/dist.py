"""Distributed helpers that are no-ops in one plain process (no process group needed there).

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` then starts the
process group (NCCL on CUDA, gloo on CPU). Without them every helper below acts as the single rank 0.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Dict, List

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def launch_rank() -> int:
    """This process's rank as torchrun launched it, known before the process group starts (0 without torchrun)."""
    return int(os.environ.get("RANK", 0)) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the torchrun process group when launched by torchrun; otherwise do nothing. A collective that waits
    longer than ``timeout_s`` for a rank (stopped, hung, dead without torchrun noticing) fails the job."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a collective giving up on a rank after the process group's timeout (gloo and NCCL
    word it so; torch gives it no type of its own). Asked after the group is shut down too."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and "timed out" in str(error).lower()


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_dict(local: Dict[Any, Any]) -> Dict[Any, Any]:
    """Every rank's ``local`` merged into one dict (the same on every rank). Keys are meant to be global, e.g.
    sample indices: an evaluation sampler pads the ranks' shares with repeats, which then merge into one."""
    merged: Dict[Any, Any] = {}
    for part in all_gather_objects(local):
        merged.update(part)
    return merged


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and returns this rank's
    slice (an all_reduce: gloo has no reduce_scatter and its all_to_all is unreliable)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated on dim 0, in rank order; gradients flow back to the rank that owns
    each slice (summed over the ranks that used it). ``t`` itself in one process."""
    if not is_dist():
        return t
    return _GatherWithGrad.apply(t)


def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole on every rank: a sharded tensor (a ``DTensor``, as FSDP holds weights and optimizer state)
    gathered, any other tensor as it is. A collective when sharded: every rank calls it, in the same order."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor ``t`` (every rank holds the same) laid out as ``like``: this rank's shard when ``like`` is a
    ``DTensor``, ``t`` itself otherwise. Each rank keeps its own slice; nothing is sent."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or isinstance(t, DTensor):
        return t
    return distribute_tensor(t.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
