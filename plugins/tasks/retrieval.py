"""``retrieval``: image-text retrieval, R@1/5/10 in both directions from embedding similarities."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework import dist
from framework.registry import TASKS
from framework.task import Task


def recall_at_k(sims: torch.Tensor, positives: List[List[int]], ks=(1, 5, 10)) -> Dict[int, float]:
    """Percentage of queries (rows of ``sims``) with a positive among their top k columns."""
    order = sims.argsort(dim=1, descending=True)
    ranks = torch.tensor([min(int((order[q] == p).nonzero()[0]) for p in pos) for q, pos in enumerate(positives)])
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


@TASKS.register("retrieval")
class Retrieval(Task):
    """Trains with the model's own loss; evaluates with ``model.image_embed`` / ``model.text_embed``.

    Args:
        text_batch_size: texts embedded per forward pass at evaluation.
    """

    best_metric = "r_mean"
    best_mode = "max"

    def __init__(self, text_batch_size: int = 256) -> None:
        self.text_batch_size = text_batch_size

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        data = loader.dataset
        local = {}
        for batch in loader:
            emb = model.image_embed(batch["image"].to(next(model.parameters()).device)).float().cpu()
            local.update(zip(batch["index"].tolist(), emb))
        merged = {}
        for part in dist.all_gather_objects(local):
            merged.update(part)
        images = torch.stack([merged[i] for i in range(len(data))])
        texts = torch.cat([model.text_embed(data.texts[i:i + self.text_batch_size]).float().cpu()
                           for i in range(0, len(data.texts), self.text_batch_size)])
        sims = images @ texts.t()
        i2t = recall_at_k(sims, data.img2txt)
        t2i = recall_at_k(sims.t(), [[j] for j in data.txt2img])
        out = {f"txt_r{k}": v for k, v in i2t.items()} | {f"img_r{k}": v for k, v in t2i.items()}
        out["r_mean"] = sum(out.values()) / len(out)
        return out
