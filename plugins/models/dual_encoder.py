"""``dual_encoder``: an image encoder and a bag-of-words text encoder trained with a contrastive (ITC) loss.

The CPU-sized baseline the framework's demo and runner tests train: it has no Q-Former, so it is also the
"no bridge" reference point for retrieval. Text is tokenised by hashing words into ``vocab_size`` buckets,
so it needs no trained tokenizer.
"""
from __future__ import annotations

import zlib
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from framework.core.registry import MODELS
from framework.core.schema import Part
from framework.models.image_encoder import build_image_encoder, example_images


def hash_tokens(texts: List[str], vocab_size: int, max_words: int) -> torch.Tensor:
    """Word ids in [1, vocab_size), 0 = padding; [B, max_words]."""
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    for i, t in enumerate(texts):
        for j, w in enumerate(t.lower().split()[:max_words]):
            ids[i, j] = 1 + zlib.crc32(w.encode()) % (vocab_size - 1)
    return ids


@MODELS.register("dual_encoder")
class DualEncoder(nn.Module):
    """Args:
        image_encoder: any registered image encoder (its tokens are mean-pooled).
        embed_dim: width of the shared embedding space.
        vocab_size, max_words: the hashed bag-of-words text encoder.
        temperature: initial ITC temperature (learned).
    """

    def __init__(self, image_encoder: Part("image_encoder"), embed_dim: int = 64, vocab_size: int = 4096,
                 max_words: int = 32, temperature: float = 0.07) -> None:
        super().__init__()
        self.image_encoder = build_image_encoder(image_encoder)
        self.vision_proj = nn.Linear(self.image_encoder.num_features, embed_dim)
        self.word_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        self.vocab_size, self.max_words = vocab_size, max_words

    def no_weight_decay(self) -> List[str]:
        return ["temp"]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(self.image_encoder(images).mean(1)), dim=-1)

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return image_features @ text_features.t()

    def text_features(self, texts: List[str]) -> torch.Tensor:
        ids = hash_tokens(texts, self.vocab_size, self.max_words).to(self.word_embed.weight.device)
        mask = (ids > 0).unsqueeze(-1).float()
        pooled = (self.word_embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def example_batch(self, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        """A training batch's shape, for the dry run's cost estimate."""
        return dict(image=example_images(self.image_encoder, batch_size),
                    text_input=[" ".join(["w"] * text_tokens)] * batch_size, image_id=torch.arange(batch_size))

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        img = self.image_features(batch["image"])
        txt = self.text_features(batch["text_input"])
        logits = self.similarity(img, txt) / self.temp.clamp(min=1e-3)
        # captions of the same image are positives too (several captions per image in a batch)
        ids = batch["image_id"]
        target = (ids[:, None] == ids[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        loss_i2t = -(F.log_softmax(logits, 1) * target).sum(1).mean()
        loss_t2i = -(F.log_softmax(logits.t(), 1) * target).sum(1).mean()
        loss_itc = (loss_i2t + loss_t2i) / 2
        return {"loss": loss_itc, "loss_itc": loss_itc}
