"""``eva_vit_g``: EVA ViT-g/14 (EVA-CLIP's image tower), as BLIP-2 uses it: 39 of its 40 blocks.

Built with timm's ``Eva`` from architecture arguments, so the 1B-parameter encoder and a 2-block test encoder
are the same code. Weights: EVA-CLIP's ``eva_vit_g.pth`` (BEiT key names).
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import torch
from timm.models.eva import Eva

from framework.models.image_encoder import ImageEncoder, Precision, prefix_map
from framework.registry import IMAGE_ENCODERS


def eva_key_map(depth: int):
    def key_map(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        rename = [(p, f"vit.{p}") for p in ("cls_token", "pos_embed", "patch_embed.", "blocks.")]
        unused = {"norm.": "the final norm (BLIP-2 takes the tokens before it)", "head.": "the classifier",
                  "fc_norm.": "the pooled-feature norm", "rel_pos_bias": "relative position bias (unused by EVA-CLIP-g)"}
        return prefix_map(state, rename, depth, "blocks.", unused)

    return key_map


@IMAGE_ENCODERS.register("eva_vit_g")
class EvaViTG(ImageEncoder):
    """Args:
        image_size: input resolution (224 in pretraining; 364 or 490 when fine-tuning: position embeddings of
            loaded weights are interpolated).
        patch_size, width, depth, heads, mlp_dim: architecture (EVA ViT-g/14 with the last block dropped).
        drop_path: stochastic depth rate (only when trainable).
        freeze: frozen (eval mode, no gradients) as in BLIP-2. precision: storage dtype when frozen.
        checkpoint: a local ``eva_vit_g.pth`` (or any file with the same key names); null: random init.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1408, depth: int = 39,
                 heads: int = 16, mlp_dim: int = 6144, drop_path: float = 0.0, freeze: bool = True,
                 precision: Precision = "fp16", checkpoint: Optional[str] = None) -> None:
        vit = Eva(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
                  mlp_ratio=mlp_dim / width, qkv_bias=True, drop_path_rate=drop_path, num_classes=0,
                  global_pool="", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        super().__init__(vit, image_size, freeze, precision)
        if checkpoint and not vit.pos_embed.is_meta:
            self.load_pretrained(checkpoint, eva_key_map(depth))
