"""``pretrain``: stage-1 pretraining. Evaluation on a held-out retrieval split reports the validation loss of
each objective and the ITC retrieval recall; the best checkpoint is chosen by the ITC mean recall."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.core.registry import TASKS
from plugins.tasks.retrieval import Retrieval


@TASKS.register("pretrain")
class Pretrain(Retrieval):
    """Args:
        k_test: candidates per query re-ranked by ITM at evaluation (0: ITC recall only, as LAVIS monitors
            pretraining; the retrieval task re-ranks 128).
        text_batch_size: texts embedded per forward pass at evaluation.
        eval_seed: seeds the hard-negative sampling of the validation ITM loss, so it is comparable across
            evaluations.
    """

    def __init__(self, k_test: int = 0, text_batch_size: int = 256, eval_seed: int = 0) -> None:
        super().__init__(k_test=k_test, text_batch_size=text_batch_size)
        self.eval_seed = eval_seed

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        metrics = super().evaluate(model, loader)
        data = loader.dataset
        device = next(model.parameters()).device
        sums: Dict[str, float] = {}
        count = 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.eval_seed)
            for batch in loader:
                if len(batch["index"]) < 2:  # ITM needs a second image for its negatives
                    continue
                texts = [data.texts[data.img2txt[i][0]] for i in batch["index"].tolist()]
                losses = model({"image": batch["image"].to(device), "text_input": texts,
                                "image_id": batch["image_id"].to(device)})
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(texts)
                count += len(texts)
        parts = dist.all_gather_objects((sums, count))
        total = sum(c for _, c in parts)
        for k in sums:
            metrics[f"val_{k}"] = sum(s[k] for s, _ in parts) / total
        return metrics
