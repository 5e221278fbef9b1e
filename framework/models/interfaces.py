"""Protocols tasks rely on, so a task works with any model that offers the methods."""
from __future__ import annotations

from typing import List, Protocol

import torch


class Retrievable(Protocol):
    """Image-text retrieval by similarity of separately computed features (ITC)."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, ...] features of each image."""

    def text_features(self, texts: List[str]) -> torch.Tensor:
        """[B, ...] features of each text."""

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """[I, T] similarity of every image with every text."""
