"""``eva_vit_g``: EVA ViT-g/14 (EVA-CLIP's image tower), as BLIP-2 uses it: 39 of its 40 blocks.

Built with timm's ``Eva`` from architecture arguments, so the 1B-parameter encoder and a 2-block test encoder
are the same code. Weights: EVA-CLIP's ``eva_vit_g.pth`` (BEiT key names). Arguments: see
:class:`framework.models.image_encoder.ImageEncoder`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Tuple

import torch
from timm.models.eva import Eva

from framework.core.registry import IMAGE_ENCODERS
from framework.models.image_encoder import (
    ImageEncoder,
    KeyMap,
    exact_mlp_ratio,
    prefix_map,
)


@IMAGE_ENCODERS.register("eva_vit_g")
class EvaViTG(ImageEncoder):
    """EVA ViT-g/14: ``full`` is EVA-CLIP-g's first 39 blocks (the 40th's tokens are never used by BLIP-2)."""

    PRESETS = {"full": dict(patch_size=14, width=1408, depth=39, heads=16, mlp_dim=6144),
               "tiny": dict(patch_size=8, width=64, depth=2, heads=4, mlp_dim=256)}

    def build_vit(self, image_size: int, drop_path: float, patch_size: int, width: int, depth: int, heads: int,
                  mlp_dim: int) -> Eva:
        return Eva(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
                   mlp_ratio=exact_mlp_ratio(mlp_dim, width), qkv_bias=True, drop_path_rate=drop_path, num_classes=0,
                   global_pool="", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))

    def eval_processing(self) -> List[Dict[str, Any]]:
        """BLIP-2's evaluation transform for this encoder: bicubic resize to ``image_size``, CLIP's normalisation
        (LAVIS's blip_image_eval, which EVA-CLIP and CLIP share)."""
        return [{"name": "resize", "size": self.image_size}, {"name": "normalize", "stats": "clip"}]

    def key_map(self, depth: int) -> KeyMap:
        def eva(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
            rename = [(p, f"vit.{p}") for p in ("cls_token", "pos_embed", "patch_embed.", "blocks.")]
            unused = {"norm.": "the final norm (BLIP-2 takes the tokens before it)", "head.": "the classifier",
                      "fc_norm.": "the pooled-feature norm",
                      "rel_pos_bias": "relative position bias (unused by EVA-CLIP-g)"}
            return prefix_map(state, rename, depth, "blocks.", unused)

        return eva
