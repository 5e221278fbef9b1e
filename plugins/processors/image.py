"""Image processors: PIL image -> image (or tensor). A dataset applies its split's list of them in order.

Randomness comes only from torch's generator, which the runner seeds per sample, so augmentation is the
same after a resume.
"""
from __future__ import annotations

from typing import List, Literal

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from framework.core.registry import PROCESSORS

# The statistics the image encoders were trained with; EVA-CLIP reuses OpenAI CLIP's.
NORMALIZATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "eva": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@PROCESSORS.register("resize")
class Resize:
    """Resize to ``size`` x ``size`` (bicubic), as BLIP-2's evaluation transform."""

    def __init__(self, size: int = 224) -> None:
        self.t = T.Resize((size, size), interpolation=InterpolationMode.BICUBIC)

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.t(img)


@PROCESSORS.register("random_resized_crop")
class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` and resize to ``size`` (BLIP-2's training transform)."""

    random = True  # a frozen-feature cache cannot hold its output

    def __init__(self, size: int = 224, scale: List[float] = (0.5, 1.0)) -> None:
        self.t = T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC)

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.t(img)


@PROCESSORS.register("hflip")
class HorizontalFlip:
    """Flip left-right with probability ``p``. Off for data whose text says 'left' or 'right' (shapes)."""

    random = True

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(()) < self.p else img


@PROCESSORS.register("normalize")
class Normalize:
    """PIL image -> float tensor [3,H,W], normalised with the named encoder's statistics."""

    def __init__(self, stats: Literal["clip", "eva", "imagenet", "none"] = "clip") -> None:
        mean, std = NORMALIZATION[stats]
        self.t = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.t(img.convert("RGB"))
