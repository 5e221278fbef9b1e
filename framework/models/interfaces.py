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


class Matchable(Protocol):
    """Image-text matching of a pair seen together (ITM), to re-rank what the similarities retrieved."""

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, N, D] what matching reads of each image; kept for a whole split during re-ranking."""

    def match_scores(self, image_tokens: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """[B] score of each (image i, text i) pair, on a scale where adding the ITC similarity makes sense."""
