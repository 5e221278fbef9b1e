"""``attribute_classifier``: an image encoder with one softmax head per labelled slot.

Pretrains an image encoder unimodally (as BLIP-2's encoders are pretrained before being frozen): the demo
trains a tiny ViT to say which coloured shape (or nothing) is in each column of the shapes images; stage 1
then loads that encoder frozen.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from framework.core.registry import MODELS
from framework.core.schema import Part
from framework.models.image_encoder import build_image_encoder, example_images


@MODELS.register("attribute_classifier")
class AttributeClassifier(nn.Module):
    """Classifies from the encoder's first token (ViT [CLS]). Args:
        image_encoder: a registered image encoder, trained here (give it ``freeze: false``).
        num_slots, num_classes: the data's ``labels`` are ``num_slots`` class indices in [0, num_classes).
    """

    def __init__(self, image_encoder: Part("image_encoder"), num_slots: int, num_classes: int) -> None:
        super().__init__()
        self.image_encoder = build_image_encoder(image_encoder)
        self.norm = nn.LayerNorm(self.image_encoder.num_features)
        self.head = nn.Linear(self.image_encoder.num_features, num_slots * num_classes)
        self.num_slots, self.num_classes = num_slots, num_classes

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """[B, num_slots, num_classes]"""
        pooled = self.norm(self.image_encoder(images).float())[:, 0]
        return self.head(pooled).view(-1, self.num_slots, self.num_classes)

    def example_batch(self, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        """A training batch's shape, for the dry run's cost estimate."""
        return dict(image=example_images(self.image_encoder, batch_size),
                    labels=torch.zeros(batch_size, self.num_slots, dtype=torch.long))

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.logits(batch["image"]).flatten(0, 1), batch["labels"].flatten())}
