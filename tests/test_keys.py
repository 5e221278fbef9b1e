"""Each key table exists once and is right both ways: our weights written into a foreign format's names and read
back are the same tensors, and the rule kinds (rename, fused projection, zero part) behave as documented."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import stage1_config, write_yaml

from framework.core.errors import CheckpointError
from framework.engine.experiment import load_experiment
from framework.models.bert import qformer_keys
from framework.models.build import build_model
from framework.models.keys import KeyTable, fused
from framework.models.qformer import QFormer


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _stage1(tmp_path: Path):
    torch.manual_seed(0)
    return build_model(load_experiment(str(write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path)))).model)


def test_rules_rename_fuse_and_carry_a_zero_part_both_ways() -> None:
    q, k, v = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    table = fused(["q", "k", "v"], ["qkv"]) + KeyTable.of([("bias", ("q_bias", None, "v_bias"))])
    theirs = {"q.weight": q, "k.weight": k, "v.weight": v, "bias": torch.cat([q[:, 0], torch.zeros(4), v[:, 0]])}
    ours, unused = table.to_ours(theirs, "test")
    assert unused == [] and torch.equal(ours["qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(ours["q_bias"], q[:, 0]) and torch.equal(ours["v_bias"], v[:, 0]) and len(ours) == 3
    back, unused = table.to_theirs(ours, "test")
    assert unused == []
    _same(back, theirs)  # the zero key bias written back as zeros
    with pytest.raises(CheckpointError, match=r"test lacks k.weight \(needed with q.weight\); keys with no place: "
                                              r"kk.weight, q.weight, v.weight"):
        table.to_ours({"q.weight": q, "kk.weight": k, "v.weight": v}, "test")


def test_qformer_bert_table_round_trips_every_weight() -> None:
    torch.manual_seed(0)
    q = QFormer(vision_width=24, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, vocab_size=50,
                max_position_embeddings=40, num_query_tokens=4, cross_attention_freq=2)
    ours = {k: v for k, v in q.state_dict().items() if k != "query_tokens"}  # queries are the model's, not BERT's
    theirs, unused = qformer_keys(3).to_theirs(ours, "ours")
    assert unused == []
    assert "bert.encoder.layer.2.crossattention.self.key.weight" in theirs
    assert "bert.encoder.layer.1.crossattention.self.key.weight" not in theirs  # cross-attention every 2 layers
    back, unused = qformer_keys(3).to_ours(theirs, "theirs")
    assert unused == []
    _same(back, ours)


def test_lavis_table_round_trips_a_stage1_model(tmp_path: Path) -> None:
    from plugins.formats.lavis import lavis_to_ours, ours_to_lavis

    model = _stage1(tmp_path)
    state = model.state_dict()
    lavis = ours_to_lavis(state, None)
    assert "Qformer.bert.encoder.layer.0.attention.self.query.weight" in lavis and "visual_encoder.blocks.1.norm1.weight" in lavis
    weights, vision, dropped = lavis_to_ours(lavis)
    _same(weights, {k: v for k, v in state.items() if not k.startswith("image_encoder.")})
    _same(vision, {k.removeprefix("image_encoder.vit."): v for k, v in state.items() if k.startswith("image_encoder.")})
    assert set(dropped) == {"Qformer.bert.embeddings.position_ids", "Qformer.cls.predictions.decoder.weight",
                            "Qformer.cls.predictions.decoder.bias"}


def test_transformers_table_round_trips_a_stage1_model(tmp_path: Path) -> None:
    from plugins.formats.hf_blip2 import hf_to_ours, ours_to_hf

    model = _stage1(tmp_path)
    state = model.state_dict()
    hf = ours_to_hf(state)
    bias = hf["vision_model.encoder.layers.0.self_attn.qkv.bias"]
    assert torch.equal(bias[48:96], torch.zeros(48))  # EVA has no key bias: transformers stores zeros
    weights, vision = hf_to_ours(hf, "ours in transformers' names")
    # transformers' retrieval model has no ITG head and no temperature: everything else comes back
    _same(weights, {k: v for k, v in state.items() if not k.startswith(("image_encoder.", "qformer.lm_head."))
                    and k != "temp"})
    _same(vision, {k.removeprefix("image_encoder.vit."): v for k, v in state.items() if k.startswith("image_encoder.")})
