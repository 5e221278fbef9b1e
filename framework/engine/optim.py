"""AdamW with parameter groups and a per-step lr schedule."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Dict, List, Optional

import torch
from torch import nn

from framework.core.errors import ConfigError
from framework.core.registry import LR_SCHEDULERS
from framework.core.schema import Length, Part, Range


@dataclass
class OptimConfig:
    """``run.optimizer``: AdamW over the trainable parameters.

    lr: peak learning rate. weight_decay: applied to matrices only; biases, norms, other 1-d parameters and
    the names a model returns from ``no_weight_decay()`` get none. betas, eps: AdamW's.
    layer_decay: layer-wise lr decay; parameter of layer i (from the model's ``layer_id(name)``, 0 = embeddings,
    ``num_layers`` + 1 = heads) gets lr * layer_decay ** (num_layers + 1 - i). null disables it.
    lr_schedule: a registered lr_scheduler with its arguments, evaluated at every optimizer step; by default the
        one registered as the default (the built-in ``linear_warmup_cosine``, as LAVIS).
    """
    lr: Annotated[float, Range(0, 1, lo_open=True)] = 1e-4  # above 1, AdamW moves every weight by more than 1 a step
    weight_decay: Annotated[float, Range(0)] = 0.05
    betas: Annotated[List[Annotated[float, Range(0, 1, hi_open=True)]], Length(2, 2)] = field(
        default_factory=lambda: [0.9, 0.999])
    eps: Annotated[float, Range(0, lo_open=True)] = 1e-8
    layer_decay: Optional[Annotated[float, Range(0, 1, lo_open=True)]] = None
    lr_schedule: Part("lr_scheduler") = field(default_factory=LR_SCHEDULERS.default_spec)


def param_groups(model: nn.Module, cfg: OptimConfig) -> List[Dict[str, Any]]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if cfg.layer_decay is not None and not (hasattr(model, "layer_id") and hasattr(model, "num_layers")):
        raise ConfigError(f"run.optimizer.layer_decay needs the model ({type(model).__name__}) to define "
                         f"layer_id(param_name) and num_layers; set layer_decay: null or add them")
    groups: Dict[tuple, Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim <= 1 or name.endswith(".bias") or name in skip) else cfg.weight_decay
        scale = 1.0
        if cfg.layer_decay is not None:
            scale = cfg.layer_decay ** (model.num_layers + 1 - model.layer_id(name))
        g = groups.setdefault((decay, scale), {"params": [], "names": [], "weight_decay": decay, "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError(f"model {type(model).__name__} has no trainable parameters: nothing to optimize (is every part "
                          f"frozen?)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_schedule(cfg: OptimConfig, total_iters: int, iters_per_epoch: int) -> Callable[[int], float]:
    spec = dict(cfg.lr_schedule)
    return LR_SCHEDULERS.get(spec.pop("name"))(base_lr=cfg.lr, total_iters=total_iters,
                                               iters_per_epoch=iters_per_epoch, **spec)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
