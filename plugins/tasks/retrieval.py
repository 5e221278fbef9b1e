"""``retrieval``: image-text retrieval, R@1/5/10 in both directions: ITC similarities re-ranked by ITM."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from framework.core import dist
from framework.core.errors import ConfigError
from framework.core.registry import TASKS
from framework.engine.task import Task
from framework.models.interfaces import Matchable, Retrievable, RetrievalSplit, missing


def recall_at_k(sims: torch.Tensor, positives: List[List[int]], ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
    """Percentage of queries (rows of ``sims``) with a positive among their top k columns."""
    order = sims.argsort(dim=1, descending=True)
    hit = torch.zeros_like(order, dtype=torch.bool)
    for q, pos in enumerate(positives):
        hit[q] = torch.isin(order[q], torch.tensor(pos))
    first = hit.float().argmax(1)  # rank of the best-placed positive
    return {k: 100.0 * float((first < k).float().mean()) for k in ks}


@torch.no_grad()
def encode_split(model: Retrievable, loader: DataLoader, text_batch_size: int, keep_tokens: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(image features, text features, image tokens for ITM or None) of a whole retrieval split, on the CPU.
    Images are split across ranks by the loader, then gathered; every rank embeds the texts."""
    data = loader.dataset
    device = next(model.parameters()).device
    local = {}
    for batch in tqdm(loader, desc="retrieval: images", disable=not dist.is_main(), leave=False):
        images = batch["image"].to(device)
        feats = model.image_features(images).float().cpu()
        tokens = model.image_tokens(images).cpu() if keep_tokens else [None] * len(feats)
        local.update(zip(batch["index"].tolist(), zip(feats, tokens)))
    merged: Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]] = dist.gather_dict(local)
    feats = torch.stack([merged[i][0] for i in range(len(data))])
    tokens = torch.stack([merged[i][1] for i in range(len(data))]) if keep_tokens else None
    texts = torch.cat([model.text_features(data.texts[i:i + text_batch_size]).float().cpu()
                       for i in tqdm(range(0, len(data.texts), text_batch_size), desc="retrieval: texts",
                                     disable=not dist.is_main(), leave=False)])
    return feats, texts, tokens


def chunked_similarity(model: Retrievable, image_feats: torch.Tensor, text_feats: torch.Tensor,
                       chunk_size: int) -> torch.Tensor:
    """[images, texts] similarities, ``chunk_size`` images at a time: a model may build an
    [images, texts, queries] intermediate (BLIP-2's max over 32 queries), 16 GB at once for 5K x 25K."""
    return torch.cat([model.similarity(image_feats[i:i + chunk_size], text_feats)
                      for i in range(0, len(image_feats), chunk_size)])


def rerank_both(sims: torch.Tensor, k: int, score: Callable[[int, torch.Tensor], torch.Tensor], batch_size: int,
                text_length: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """ITM re-ranking both ways (the paper's protocol): each image's ``k`` best texts and each text's ``k`` best
    images by ``sims`` [images, texts] are re-scored as ``score + sims`` and placed before the other candidates,
    which keep their ITC order. Returns (i2t [images, texts], t2i [texts, images]).

    The pairs of both directions are scored once each, grouped by image: ``score(i, texts)`` scores image i
    against up to ``batch_size`` texts at a time, so what matching needs of an image (BLIP-2: its cross-attention
    keys/values) is computed once per image and batch, not once per pair and direction (LAVIS). With
    ``text_length`` an image's texts go shortest first: a batch pads to its longest text. Images are split across
    ranks and the scores gathered."""
    n_img, n_txt = sims.shape
    top_i2t = sims.topk(min(k, n_txt), dim=1).indices  # [images, k]
    top_t2i = sims.t().topk(min(k, n_img), dim=1).indices  # [texts, k]
    wanted = torch.zeros(n_img, n_txt, dtype=torch.bool)
    wanted.scatter_(1, top_i2t, True)
    wanted.t().scatter_(1, top_t2i, True)
    local = {}
    for i in tqdm(range(dist.rank(), n_img, dist.world_size()), desc="retrieval: ITM re-ranking",
                  disable=not dist.is_main(), leave=False):
        texts = wanted[i].nonzero().squeeze(1)
        if text_length is not None:
            texts = texts[text_length[texts].argsort(stable=True)]
        local[i] = (texts, torch.cat([score(i, texts[j:j + batch_size]).float().cpu()
                                      for j in range(0, len(texts), batch_size)]))
    rescored = sims.clone()
    for part in dist.all_gather_objects(local):
        for i, (texts, itm) in part.items():
            rescored[i, texts] += itm
    i2t = _place_first(sims, top_i2t, rescored.gather(1, top_i2t))
    t2i = _place_first(sims.t(), top_t2i, rescored.t().gather(1, top_t2i))
    return i2t, t2i


def _place_first(sims: torch.Tensor, top: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``sims`` with each row's ``top`` columns set to ``new`` and the other columns moved below all of them,
    in their order."""
    below = new.amin(1, keepdim=True) - 1.0 - (sims.amax(1, keepdim=True) - sims)
    return below.scatter(1, top, new)


def chance_recall(n_candidates: int, n_positives: List[int], k: int) -> float:
    """Expected R@k (%) of a random ranking: some of ``n_positives[q]`` positives among the first k."""
    total = 0.0
    for p in n_positives:
        miss = math.prod((n_candidates - p - j) / (n_candidates - j) for j in range(min(k, n_candidates - p)))
        total += 1.0 - (miss if k < n_candidates - p + 1 else 0.0)
    return 100.0 * total / len(n_positives)


def rerank_metrics(i2t: torch.Tensor, t2i: torch.Tensor, img2txt: List[List[int]], txt2img: List[int],
                   ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """:func:`retrieval_metrics` from separately scored directions: ``i2t`` [images, texts], ``t2i`` [texts,
    images] (after re-ranking the two differ)."""
    img_side = retrieval_metrics(i2t, img2txt, txt2img, ks)
    txt_side = retrieval_metrics(t2i.t(), img2txt, txt2img, ks)
    out = {k: v for k, v in img_side.items() if k.startswith(("txt_r", "chance_txt"))}
    out |= {k: v for k, v in txt_side.items() if k.startswith(("img_r", "chance_img"))}
    out["r_mean"] = sum(out[f"{d}_r{k}"] for d in ("txt", "img") for k in ks) / (2 * len(ks))
    return out


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
    """Image-text retrieval (the paper's Table 5 protocol): ITC similarities of every image with every text, then
    each image's and each text's ``k_test`` best candidates re-ranked by ITM (score = ITM match logit + ITC
    similarity). R@1/5/10 both ways (``txt_r*``: image->text, ``img_r*``: text->image) and their mean; with
    re-ranking, the ITC-only figures too (``itc_*``). Trains with the model's own loss.

    Args:
        k_test: candidates re-ranked per query (the paper: 128; 0: ITC only, for models without ITM).
        text_batch_size: texts embedded per forward pass.
        itm_batch_size: texts matched with one image per ITM forward pass.
        chunk_size: images per similarity block (bounds memory on 5K images x 25K texts).
    """

    best_metric = "r_mean"
    best_mode = "max"

    def __init__(self, k_test: int = 128, text_batch_size: int = 256, itm_batch_size: int = 128,
                 chunk_size: int = 256) -> None:
        self.k_test, self.text_batch_size = k_test, text_batch_size
        self.itm_batch_size, self.chunk_size = itm_batch_size, chunk_size

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        data = loader.dataset
        lacks = missing(data, RetrievalSplit)
        if lacks:
            raise ConfigError(f"task retrieval evaluates a retrieval split (texts listed apart from the images); "
                              f"{type(data).__name__} has no {', '.join(lacks)}: use a retrieval data set")
        self.require(model, Retrievable, "image and text features for ITC")
        if self.k_test:
            self.require(model, Matchable, "image-text matching for re-ranking; or set task.k_test: 0")
        images, texts, tokens = encode_split(model, loader, self.text_batch_size, keep_tokens=self.k_test > 0)
        sims = chunked_similarity(model, images, texts, self.chunk_size)
        itc = retrieval_metrics(sims, data.img2txt, data.txt2img)
        if not self.k_test:
            return itc
        device = next(model.parameters()).device
        i2t, t2i = rerank_both(
            sims, self.k_test, lambda i, texts: model.match_scores(tokens[i:i + 1].to(device),
                                                                   [data.texts[t] for t in texts]),
            self.itm_batch_size, text_length=torch.tensor([len(t) for t in data.texts]))
        out = rerank_metrics(i2t, t2i, data.img2txt, data.txt2img)
        return out | {f"itc_{k}": v for k, v in itc.items() if not k.startswith("chance")}
