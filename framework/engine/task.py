"""The Task contract: what a training step computes and how a model is evaluated."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.models.interfaces import require


class Task:
    """Base class for registered tasks (``@TASKS.register``); the config's ``task:`` arguments go to ``__init__``.

    ``best_metric`` / ``best_mode`` choose the checkpoint kept as ``best.pt``: the metric of the first
    evaluation split, higher (``max``) or lower (``min``) is better.
    """

    best_metric: str = "loss"
    best_mode: str = "min"

    def require(self, model: nn.Module, contract: type, kind: str) -> None:
        """Fail clearly when ``model`` lacks what this task calls (a contract of
        :mod:`framework.models.interfaces`, e.g. ``Generative`` of a stage-1 model)."""
        require(model, contract, f"task {type(self).__name__}", kind)

    @staticmethod
    def save_predictions(records: List[Dict[str, Any]], path: Optional[Path]) -> None:
        """Write predictions (official result format) to ``path``, once, from rank 0 (None: not written)."""
        if path is None or not dist.is_main():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1) + "\n")

    def example_batch(self, model: nn.Module, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        """A training batch as :meth:`train_step` reads it, for the dry run's cost estimate: the model's own
        (:class:`framework.models.interfaces.HasExampleBatch`), with what this task's samples add to it."""
        return model.example_batch(batch_size, text_tokens)

    def train_step(self, model: nn.Module, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Loss terms of one micro-batch; ``loss`` is the one back-propagated, the others are logged."""
        return model(batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        """Metrics over the whole split; a task that predicts writes its predictions to ``predictions`` (the
        runner gives one file per split and evaluation; None: not written). Under torchrun every rank calls this on
        its share of ``loader`` and must return the same, gathered, numbers (see
        :func:`framework.core.dist.all_gather_objects`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")
