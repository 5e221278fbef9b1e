"""FSDP, the run strategy for models whose weights, gradients and optimizer state do not fit one device each
(``run.strategy: fsdp``): torch's ``fully_shard`` (FSDP2) shards every weight over the ranks, and each part says
which of its layers are gathered one at a time (:class:`framework.models.interfaces.ShardsByLayer`: the LLM's
decoder layers, the ViT's blocks, the Q-Former's layers). What is not in such a layer (embeddings, the query
tokens, projections, norms) forms the model's own unit, gathered for a whole step and for evaluation.

Checkpoints are the ones a single process or DDP writes: the trainable weights and the optimizer state gathered
whole, saved by rank 0 (:func:`framework.core.checkpoint.trainable_state_dict`); reading one, each rank keeps its
own shard (:func:`framework.core.checkpoint.restore`). So a run resumes under either strategy, and the
converters read what FSDP wrote.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, List, Literal, Tuple

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from framework.core import dist
from framework.core.errors import ConfigError
from framework.models.interfaces import ShardsByLayer


@dataclass
class FsdpConfig:
    """``run.fsdp:``, read with ``run.strategy: fsdp``. Keys:

    sharding: ``full`` (ZeRO-3: each layer's weights gathered around its forward and again in backward),
    ``grad_op`` (ZeRO-2-like: weights gathered in forward stay gathered until backward; fewer all-gathers, more
    memory) or ``hybrid`` (full sharding within a node, a replica per node, gradients averaged across nodes:
    a node's ranks are torchrun's LOCAL_WORLD_SIZE).
    mixed_precision: ``fp32`` (weights gathered and computed in the dtype they are held in: a DDP run's numbers)
    or ``bf16`` (gathered in bf16, the ops computing in bf16 as under ``run.amp=bf16`` (autocast), gradients
    reduced in fp32; the shards keep their own dtype, so a frozen fp16 LLM stays fp16 at rest and the trainable
    weights fp32). ``run.amp`` stays off with FSDP: this key is its precision.
    activation_checkpointing: recompute in backward the activations of the layers a part marks (the LLM's
    decoder layers, whose activations dominate stage 2), non-reentrant, instead of keeping them.
    """
    sharding: Literal["full", "grad_op", "hybrid"] = "full"
    mixed_precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = True


def check(run: Any) -> None:
    """Refuse what FSDP is not combined with (``run``: the ``run:`` section), before any work."""
    if run.strategy != "fsdp":
        return
    if run.amp != "off":
        raise ConfigError(f"run.amp={run.amp} with run.strategy=fsdp: FSDP's precision is run.fsdp.mixed_precision "
                          f"(bf16 or fp32); set run.amp=off")
    if run.compile:
        raise ConfigError("run.compile with run.strategy=fsdp is not supported (FSDP's hooks around each layer are "
                          "untested under torch.compile here); set run.compile=false")


def autocast_precision(run: Any) -> str:
    """What the step runs under autocast (``run``: the ``run:`` section): ``run.amp``, or FSDP's bf16, whose layers
    are gathered in bf16 (:func:`shard`) and whose ops then compute in it."""
    return "bf16" if run.strategy == "fsdp" and run.fsdp.mixed_precision == "bf16" else run.amp


def _mesh(sharding: str, device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.world_size()
    if sharding != "hybrid":
        return init_device_mesh(device.type, (world,))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world % local:
        raise ConfigError(f"run.fsdp.sharding=hybrid needs the same number of ranks on every node; {world} ranks "
                          f"with {local} on this node")
    return init_device_mesh(device.type, (world // local, local), mesh_dim_names=("replicate", "shard"))


def shard(model: nn.Module, cfg: FsdpConfig, device: torch.device) -> nn.Module:
    """``model`` sharded in place over the job's ranks: each layer a part declares its own unit (its activations
    recomputed in backward where the part asks and ``activation_checkpointing`` is on), the rest the model's unit.
    Scalar parameters (the ITC temperature) stay whole on every rank: ``fully_shard`` refuses them, and
    :func:`average_whole_gradients` averages their gradients as DDP would. Returns ``model``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if any(not p.is_floating_point() for p in model.parameters()):
        raise ConfigError("run.strategy=fsdp shards floating-point weights only, and the model holds others (a "
                          "quantised LLM: model.llm.precision int8 or nf4); use run.strategy=ddp with it")
    mesh = _mesh(cfg.sharding, device)
    options = dict(mesh=mesh, reshard_after_forward=cfg.sharding != "grad_op")
    # the layers gathered in bf16; the model's own unit (query tokens, projections, the norms BLIP-2 computes in
    # fp32 such as ln_vision) as held, its ops in bf16 by autocast where they are not kept in fp32
    layer_precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if cfg.mixed_precision == "bf16" else MixedPrecisionPolicy()
    for layer, recomputed in layers(model, cfg):
        if recomputed:
            recompute(layer)
        fully_shard(layer, mp_policy=layer_precision, **options)
        for method in getattr(layer, "fsdp_forward_methods", ()):
            register_fsdp_forward_method(layer, method)
    fully_shard(model, ignored_params=set(whole_parameters(model)), **options)
    return model


def recompute(layer: nn.Module) -> None:
    """Keep none of ``layer``'s activations for backward but its inputs; recompute them there (non-reentrant, with
    the forward's random state: the same dropout masks). Its own forward, wrapped: its parameter names, and so
    checkpoints, do not change."""
    layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)


def layers(model: nn.Module, cfg: FsdpConfig) -> List[Tuple[nn.Module, bool]]:
    """Every layer the parts declare (:class:`ShardsByLayer`), with whether it is recomputed in backward."""
    return [(layer, cfg.activation_checkpointing and part.recompute_layers) for part in model.modules()
            if isinstance(part, ShardsByLayer) for layer in part.fsdp_layers()]


def whole_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The trainable parameters FSDP leaves whole on every rank (scalars)."""
    return [p for p in model.parameters() if p.dim() == 0 and p.requires_grad]


def average_whole_gradients(model: nn.Module) -> None:
    """Average over the ranks the gradients FSDP does not reduce (:func:`whole_parameters`), after the last
    micro-batch's backward."""
    for p in whole_parameters(model):
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= dist.world_size()


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module, cfg: FsdpConfig) -> Iterator[None]:
    """Every unit of a sharded ``model`` gathered and kept gathered (a plain model as is). Evaluation runs
    inside: it needs the weights alone (no gradients, optimizer state or kept activations), and with no
    collective in a forward, each rank evaluates its share as under DDP: beam searches that stop at different
    steps on different ranks, methods besides ``forward`` (generate, image_features). Afterwards the units are
    sharded again, and reshard after forward as configured."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        if unit is not model:  # the model's own unit never reshards after forward (torch keeps it for backward)
            unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            if unit is not model:
                unit.set_reshard_after_forward(cfg.sharding != "grad_op", recurse=False)
            unit.reshard()
