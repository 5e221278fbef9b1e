"""``conv_stem``: a small trainable convolutional encoder for CPU demos and tests (not from the paper)."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from framework.core.registry import IMAGE_ENCODERS
from framework.core.schema import Range


@IMAGE_ENCODERS.register("conv_stem")
class ConvStem(nn.Module):
    """Strided 3x3 convolutions; each output position is a token.

    Args:
        width: channels (= ``num_features``, the token width).
        depth: number of stride-2 convolutions; tokens = (H / 2**depth) * (W / 2**depth).
    Always trained (``frozen`` False): it has no pretrained weights to keep.
    """

    frozen = False

    def __init__(self, width: Annotated[int, Range(1)] = 64, depth: Annotated[int, Range(1)] = 3) -> None:
        super().__init__()
        layers, c = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.GELU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.num_features = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).flatten(2).transpose(1, 2)
