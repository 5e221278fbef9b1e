"""``retrieval``: image-text retrieval, R@1/5/10 in both directions from ITC similarities."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework import dist
from framework.models.interfaces import Retrievable
from framework.registry import TASKS
from framework.task import Task


def recall_at_k(sims: torch.Tensor, positives: List[List[int]], ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
    """Percentage of queries (rows of ``sims``) with a positive among their top k columns."""
    order = sims.argsort(dim=1, descending=True)
    hit = torch.zeros_like(order, dtype=torch.bool)
    for q, pos in enumerate(positives):
        hit[q] = torch.isin(order[q], torch.tensor(pos))
    first = hit.float().argmax(1)  # rank of the best-placed positive
    return {k: 100.0 * float((first < k).float().mean()) for k in ks}


@torch.no_grad()
def itc_similarities(model: Retrievable, loader: DataLoader, text_batch_size: int) -> torch.Tensor:
    """[images, texts] similarities over a retrieval split; images split across ranks, then gathered."""
    data = loader.dataset
    device = next(model.parameters()).device
    local = {}
    for batch in loader:
        feats = model.image_features(batch["image"].to(device)).float().cpu()
        local.update(zip(batch["index"].tolist(), feats))
    merged: Dict[int, torch.Tensor] = {}
    for part in dist.all_gather_objects(local):
        merged.update(part)
    images = torch.stack([merged[i] for i in range(len(data))])
    texts = torch.cat([model.text_features(data.texts[i:i + text_batch_size]).float().cpu()
                       for i in range(0, len(data.texts), text_batch_size)])
    return model.similarity(images, texts)


def chance_recall(n_candidates: int, n_positives: List[int], k: int) -> float:
    """Expected R@k (%) of a random ranking: some of ``n_positives[q]`` positives among the first k."""
    total = 0.0
    for p in n_positives:
        miss = math.prod((n_candidates - p - j) / (n_candidates - j) for j in range(min(k, n_candidates - p)))
        total += 1.0 - (miss if k < n_candidates - p + 1 else 0.0)
    return 100.0 * total / len(n_positives)


def retrieval_metrics(sims: torch.Tensor, img2txt: List[List[int]], txt2img: List[int],
                      ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@k both ways (``txt_r*``: image->text, ``img_r*``: text->image), their mean ``r_mean``, and what a
    random ranking would score (``chance_*``), to read the numbers against."""
    i2t = recall_at_k(sims, img2txt, ks)
    t2i = recall_at_k(sims.t(), [[j] for j in txt2img], ks)
    out = {f"txt_r{k}": v for k, v in i2t.items()} | {f"img_r{k}": v for k, v in t2i.items()}
    out["r_mean"] = sum(out.values()) / len(out)
    n_img, n_txt = sims.shape
    for k in ks:
        out[f"chance_txt_r{k}"] = chance_recall(n_txt, [len(t) for t in img2txt], k)
        out[f"chance_img_r{k}"] = chance_recall(n_img, [1] * n_txt, k)
    return out


@TASKS.register("retrieval")
class Retrieval(Task):
    """Trains with the model's own loss; evaluates R@1/5/10 (``txt_r*``: image->text, ``img_r*``: text->image)
    from the model's ITC similarities (see :class:`framework.models.interfaces.Retrievable`).

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
        return retrieval_metrics(itc_similarities(model, loader, self.text_batch_size), data.img2txt, data.txt2img)
