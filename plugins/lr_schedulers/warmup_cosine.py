"""Linear warmup, then cosine decay to ``min_lr``; evaluated at every optimizer step."""
from __future__ import annotations

import math
from typing import Annotated, Callable

from framework.core.errors import ConfigError
from framework.core.registry import LR_SCHEDULERS
from framework.core.schema import Range


@LR_SCHEDULERS.register("linear_warmup_cosine", default=True)
def linear_warmup_cosine(base_lr: float, total_iters: int, iters_per_epoch: int,
                         min_lr: Annotated[float, Range(0)] = 0.0, warmup_lr: Annotated[float, Range(0)] = 0.0,
                         warmup_iters: Annotated[int, Range(0)] = 0,
                         warmup_epochs: Annotated[float, Range(0)] = 0.0) -> Callable[[int], float]:
    """lr(step) for optimizer step ``step`` (0-based).

    Args:
        min_lr: the lr reached at the last step.
        warmup_lr: the lr at step 0, rising linearly to the optimizer's ``lr``.
        warmup_iters / warmup_epochs: warmup length, in optimizer steps or in (fractional) epochs; give one.
            Epochs are converted to steps, so the lr changes every step even when warmup spans epochs.
    """
    if warmup_iters and warmup_epochs:
        raise ConfigError("run.optimizer.lr_schedule: give warmup_iters or warmup_epochs, not both")
    warmup = warmup_iters or round(warmup_epochs * iters_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return warmup_lr + (base_lr - warmup_lr) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_iters - 1 - warmup))
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))

    return lr_at


@LR_SCHEDULERS.register("constant")
def constant(base_lr: float, total_iters: int, iters_per_epoch: int, warmup_iters: Annotated[int, Range(0)] = 0) -> Callable[[int], float]:
    """The optimizer's ``lr`` throughout, after an optional linear warmup from 0 over ``warmup_iters`` steps."""
    return lambda step: base_lr * min(1.0, (step + 1) / warmup_iters) if warmup_iters else base_lr
