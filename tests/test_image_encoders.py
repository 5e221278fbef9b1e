"""Image encoders: real sizes on meta, weight key maps, interpolation, freezing."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from framework.core.errors import WeightLoadError
from framework.core.registry import IMAGE_ENCODERS

TINY = dict(image_size=32, patch_size=8, width=32, depth=2, heads=4, mlp_dim=64, precision="fp32")


def test_real_sizes_on_meta() -> None:
    with torch.device("meta"):
        g = IMAGE_ENCODERS.get("eva_vit_g")()
        l = IMAGE_ENCODERS.get("clip_vit_l")()
    assert len(g.vit.blocks) == 39 and g.num_features == 1408
    assert sum(p.numel() for p in g.parameters()) == 985_894_528  # ~1.0B: EVA ViT-g/14 without its last block
    assert len(l.vit.blocks) == 23 and l.num_features == 1024
    assert sum(p.numel() for p in l.parameters()) == 290_581_504  # ~0.3B: CLIP ViT-L/14 without its last block


def _eva_pth(source: torch.nn.Module, extra_block: bool) -> dict:
    """A state dict with EVA-CLIP's eva_vit_g.pth key names (one block more than used, plus the final norm)."""
    state = {k[len("vit."):]: v.clone() for k, v in source.state_dict().items() if k.startswith("vit.")}
    if extra_block:
        state.update({k.replace("blocks.1.", "blocks.2."): v.clone() for k, v in state.items() if k.startswith("blocks.1.")})
    state["norm.weight"], state["norm.bias"] = torch.ones(32), torch.zeros(32)
    return state


def test_eva_checkpoint_loads_through_the_key_map(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="framework")
    torch.manual_seed(0)
    src = IMAGE_ENCODERS.get("eva_vit_g")(**TINY)
    torch.save(_eva_pth(src, extra_block=True), tmp_path / "eva_vit_g.pth")
    enc = IMAGE_ENCODERS.get("eva_vit_g")(**TINY, checkpoint=str(tmp_path / "eva_vit_g.pth"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), src(x))
    log = caplog.text
    assert "blocks after the one whose tokens BLIP-2 uses" in log and "blocks.2.attn.qkv.weight" in log
    assert "the final norm" in log


def test_unmapped_key_is_an_error_naming_it(tmp_path: Path) -> None:
    src = IMAGE_ENCODERS.get("eva_vit_g")(**TINY)
    state = _eva_pth(src, extra_block=False)
    state["mystery.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightLoadError, match=r"1 keys have no place in the encoder: mystery.weight"):
        IMAGE_ENCODERS.get("eva_vit_g")(**TINY, checkpoint=str(tmp_path / "bad.pth"))


def _openai_visual(src: torch.nn.Module) -> dict:
    """OpenAI CLIP names for the tiny timm CLIP tower, plus a text tower and the final ln/proj."""
    s = {k[len("vit."):]: v for k, v in src.state_dict().items()}
    out = {"visual.class_embedding": s["cls_token"].reshape(-1), "visual.positional_embedding": s["pos_embed"][0],
           "visual.conv1.weight": s["patch_embed.proj.weight"], "visual.ln_pre.weight": s["norm_pre.weight"],
           "visual.ln_pre.bias": s["norm_pre.bias"], "visual.ln_post.weight": torch.ones(32),
           "visual.ln_post.bias": torch.zeros(32), "visual.proj": torch.zeros(32, 16),
           "token_embedding.weight": torch.zeros(10, 16), "transformer.resblocks.0.ln_1.weight": torch.ones(16)}
    for i in range(2):
        b, v = f"blocks.{i}.", f"visual.transformer.resblocks.{i}."
        out |= {v + "ln_1.weight": s[b + "norm1.weight"], v + "ln_1.bias": s[b + "norm1.bias"],
                v + "attn.in_proj_weight": s[b + "attn.qkv.weight"], v + "attn.in_proj_bias": s[b + "attn.qkv.bias"],
                v + "attn.out_proj.weight": s[b + "attn.proj.weight"], v + "attn.out_proj.bias": s[b + "attn.proj.bias"],
                v + "ln_2.weight": s[b + "norm2.weight"], v + "ln_2.bias": s[b + "norm2.bias"],
                v + "mlp.c_fc.weight": s[b + "mlp.fc1.weight"], v + "mlp.c_fc.bias": s[b + "mlp.fc1.bias"],
                v + "mlp.c_proj.weight": s[b + "mlp.fc2.weight"], v + "mlp.c_proj.bias": s[b + "mlp.fc2.bias"]}
    return out


def test_openai_clip_checkpoint_loads_through_the_key_map(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="framework")
    torch.manual_seed(0)
    src = IMAGE_ENCODERS.get("clip_vit_l")(**TINY)
    torch.save(_openai_visual(src), tmp_path / "clip.pt")
    enc = IMAGE_ENCODERS.get("clip_vit_l")(**TINY, checkpoint=str(tmp_path / "clip.pt"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), src(x))
    assert "CLIP's text tower" in caplog.text and "the CLIP projection" in caplog.text


def test_position_embeddings_are_interpolated_for_a_larger_image(tmp_path: Path) -> None:
    src = IMAGE_ENCODERS.get("eva_vit_g")(**TINY)
    torch.save(_eva_pth(src, extra_block=False), tmp_path / "eva.pth")
    big = IMAGE_ENCODERS.get("eva_vit_g")(**{**TINY, "image_size": 48}, checkpoint=str(tmp_path / "eva.pth"))
    assert big.vit.pos_embed.shape == (1, 1 + 36, 32)
    assert big(torch.randn(1, 3, 48, 48)).shape == (1, 37, 32)


def test_an_image_of_another_size_is_a_clear_error() -> None:
    enc = IMAGE_ENCODERS.get("eva_vit_g")(**TINY)
    with pytest.raises(ValueError, match=r"built for 32x32 images got \(64, 64\); set the encoder's image_size"):
        enc(torch.randn(1, 3, 64, 64))


def test_frozen_encoder_stays_in_eval_mode_without_gradients_in_its_precision() -> None:
    enc = IMAGE_ENCODERS.get("eva_vit_g")(**{**TINY, "precision": "bf16"}, drop_path=0.5)
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and not out.requires_grad
    trainable = IMAGE_ENCODERS.get("eva_vit_g")(**TINY, freeze=False)
    assert trainable.train().training and all(p.requires_grad for p in trainable.parameters())


def test_tiny_preset_is_the_same_code_at_test_size() -> None:
    tiny = IMAGE_ENCODERS.get("eva_vit_g")(image_size=32, preset="tiny", precision="fp32")
    assert len(tiny.vit.blocks) == 2 and tiny.num_features == 64 and tiny(torch.randn(1, 3, 32, 32)).shape == (1, 17, 64)
    wider = IMAGE_ENCODERS.get("clip_vit_l")(image_size=32, preset="tiny", width=96, heads=4, precision="fp32")
    assert wider.num_features == 96 and len(wider.vit.blocks) == 2  # explicit keys override the preset


@pytest.mark.parametrize("name", ["eva_vit_g", "clip_vit_l"])
@pytest.mark.parametrize("width, mlp_dim", [(44, 120), (56, 115), (1408, 6144)])
def test_mlp_widths_that_are_not_round_multiples_build_exactly_and_load(tmp_path: Path, name: str, width: int,
                                                                       mlp_dim: int) -> None:
    sizes = dict(image_size=16, patch_size=8, width=width, depth=1, heads=4, mlp_dim=mlp_dim, precision="fp32")
    with torch.device("meta"):
        enc = IMAGE_ENCODERS.get(name)(**sizes)
    assert (enc.vit.blocks[0].mlp.fc1.out_features, enc.vit.blocks[0].mlp.fc2.in_features) == (mlp_dim, mlp_dim)
    if width > 100:
        return  # the real width: built on meta only
    src = IMAGE_ENCODERS.get(name)(**sizes)
    torch.save({k[len("vit."):]: v for k, v in src.state_dict().items()}, tmp_path / "w.pth")
    loaded = IMAGE_ENCODERS.get(name)(**sizes, checkpoint=str(tmp_path / "w.pth"))
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(loaded(x), src(x))  # the same weights through the same code: bit-equal


def test_a_plugins_frozen_encoder_of_its_own_class_is_held_in_eval_mode_too(monkeypatch) -> None:
    """An encoder that is a plain ``nn.Module`` with ``frozen = True`` (not the framework's base class): built
    through the framework, it gets no gradients and a model's ``train()`` leaves it in eval mode (its dropout
    off), as LAVIS's frozen ViT."""
    from torch import nn

    import framework.models.image_encoder as image_encoder

    class OwnFrozenEncoder(nn.Module):
        frozen, num_features = True, 8

        def __init__(self) -> None:
            super().__init__()
            self.proj, self.drop = nn.Linear(3, 8), nn.Dropout(0.5)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.drop(self.proj(images.flatten(2).transpose(1, 2)))

    # what the registry would return for a plugin registering OwnFrozenEncoder (the global registry stays as is)
    monkeypatch.setattr(image_encoder, "build", lambda kind, spec: OwnFrozenEncoder())
    enc = image_encoder.build_image_encoder({"name": "own_frozen_encoder"})
    model = nn.ModuleDict({"image_encoder": enc, "head": nn.Linear(8, 2)}).train()
    assert model["head"].training and not enc.training and not enc.drop.training
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(enc(x), enc(x))  # no dropout in training


@pytest.mark.parametrize("name", ["eva_vit_g", "clip_vit_l"])
def test_layer_ids_for_layer_decay_come_from_the_encoder(name: str) -> None:
    """Layer-wise lr decay reads each parameter's layer from the encoder part (timm's ``group_matcher``, as its
    own optimisers do): 0 the embeddings (with CLIP's pre-norm), i + 1 block i; the BLIP-2 model puts everything
    outside the encoder above the last block."""
    enc = IMAGE_ENCODERS.get(name)(**TINY, freeze=False)
    assert enc.num_layers == TINY["depth"]
    ids = {n: enc.layer_id(n) for n, _ in enc.named_parameters()}
    assert {n for n, i in ids.items() if i == 0} == {n for n in ids if n.split(".")[1] in (
        "cls_token", "pos_embed", "patch_embed", "norm_pre")}
    assert all(i == int(n.split(".")[2]) + 1 for n, i in ids.items() if n.startswith("vit.blocks."))
    assert set(ids.values()) == set(range(TINY["depth"] + 1))  # nothing after the blocks: the final norm is gone
