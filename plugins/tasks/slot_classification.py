"""``slot_classification``: several labelled slots per image, one class each (the data's ``labels``)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.core.registry import TASKS
from framework.engine.task import Task


@TASKS.register("slot_classification")
class SlotClassification(Task):
    """Evaluates ``model.logits(images)`` [B, slots, classes]: ``exact_match`` (% of images with every slot
    right) and ``slot_accuracy`` (% of slots right)."""

    best_metric = "exact_match"
    best_mode = "max"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        device = next(model.parameters()).device
        local = {}
        for batch in loader:
            right = model.logits(batch["image"].to(device)).argmax(-1).cpu() == batch["labels"]
            local.update(zip(batch["index"].tolist(), right))
        right = torch.stack(list(dist.gather_dict(local).values()))
        return {"exact_match": 100.0 * float(right.all(1).float().mean()),
                "slot_accuracy": 100.0 * float(right.float().mean())}
