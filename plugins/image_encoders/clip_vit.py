"""``clip_vit_l``: CLIP ViT-L/14's image tower as BLIP-2 uses it: the second-to-last block's tokens.

Built with timm's ``VisionTransformer`` (pre-norm, QuickGELU, as CLIP). Weights: OpenAI CLIP key names
(``visual.``-prefixed or bare, as LAVIS stores them) or timm's own names. Arguments: see
:class:`framework.models.image_encoder.ImageEncoder`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer

from framework.core.registry import IMAGE_ENCODERS
from framework.models.image_encoder import (
    ImageEncoder,
    KeyMap,
    exact_mlp_ratio,
    prefix_map,
)

_OPENAI_RULES = [("conv1.", "patch_embed.proj."), ("ln_pre.", "norm_pre."), ("transformer.resblocks.", "blocks."),
                 (".ln_1.", ".norm1."), (".ln_2.", ".norm2."), (".attn.in_proj_weight", ".attn.qkv.weight"),
                 (".attn.in_proj_bias", ".attn.qkv.bias"), (".attn.out_proj.", ".attn.proj."),
                 (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2.")]


def _openai_to_timm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k == "class_embedding":
            k, v = "cls_token", v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            k, v = "pos_embed", v.unsqueeze(0)
        for src, dst in _OPENAI_RULES:
            if src.startswith(".") or k.startswith(src):
                k = k.replace(src, dst)
        out[k] = v
    return out


@IMAGE_ENCODERS.register("clip_vit_l")
class ClipViTL(ImageEncoder):
    """CLIP ViT-L/14: ``full`` is its first 23 of 24 blocks, pre-norm with QuickGELU as OpenAI trained it; the
    24th block and the final norm are left out, as BLIP-2 reads the second-to-last block's tokens."""

    PRESETS = {"full": dict(patch_size=14, width=1024, depth=23, heads=16, mlp_dim=4096),
               "tiny": dict(patch_size=8, width=64, depth=2, heads=4, mlp_dim=256)}

    def build_vit(self, image_size: int, drop_path: float, patch_size: int, width: int, depth: int, heads: int,
                  mlp_dim: int) -> VisionTransformer:
        return VisionTransformer(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth,
                                 num_heads=heads, mlp_ratio=exact_mlp_ratio(mlp_dim, width), pre_norm=True, act_layer="quick_gelu",
                                 drop_path_rate=drop_path, num_classes=0, global_pool="")

    def eval_processing(self) -> List[Dict[str, Any]]:
        """BLIP-2's evaluation transform for this encoder: bicubic resize to ``image_size``, CLIP's normalisation
        (LAVIS's blip_image_eval, which EVA-CLIP and CLIP share)."""
        return [{"name": "resize", "size": self.image_size}, {"name": "normalize", "stats": "clip"}]

    def key_map(self, depth: int) -> KeyMap:
        def clip(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
            text_tower: Dict[str, str] = {}
            if any(k.startswith("visual.") for k in state):  # a whole CLIP model: keep its image tower
                text_tower = {k: "CLIP's text tower" for k in state if not k.startswith("visual.")}
                state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
            if any(k.startswith(("conv1.", "transformer.")) for k in state):
                state = _openai_to_timm(state)
            rename = [(p, f"vit.{p}") for p in ("cls_token", "pos_embed", "patch_embed.", "norm_pre.", "blocks.")]
            unused = {"ln_post.": "the final norm (BLIP-2 takes the tokens before it)", "norm.": "the final norm",
                      "proj": "the CLIP projection", "head.": "the classifier", "fc_norm.": "the pooled-feature norm"}
            out, dropped = prefix_map(state, rename, depth, "blocks.", unused)
            return out, {**dropped, **text_tower}

        return clip
