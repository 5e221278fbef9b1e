"""BERT's weights and the Q-Former: the key table in BERT's names (the one every foreign format derives from)
and the loading of a BERT checkpoint folder into a Q-Former (the paper's initialisation)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from framework.core.checkpoint import read_weights
from framework.core.errors import CheckpointError, NotABertCheckpoint
from framework.models.keys import KeyTable, fused, linear
from framework.models.qformer import QFormer


# ------------------------------------------------------------------------------------------ weight key table
def qformer_keys(num_layers: int) -> KeyTable:
    """The Q-Former's weights in BERT's names (``BertLMHeadModel``: ``bert.`` body, ``cls.`` LM head), the one
    table every foreign format derives from: LAVIS stores exactly these names under ``Qformer.``, transformers'
    Blip2 renames a few (:mod:`plugins.formats.hf_blip2`), and a BERT checkpoint initialises the Q-Former through
    it. The query feed-forward is BERT's ``intermediate_query`` / ``output_query`` (LAVIS's names; BERT has none)."""
    table = KeyTable.of([("bert.embeddings.word_embeddings.weight", "word_embeddings.weight"),
                         ("bert.embeddings.position_embeddings.weight", "position_embeddings.weight")])
    table += linear("bert.embeddings.LayerNorm", "emb_ln")
    for i in range(num_layers):
        s, d = f"bert.encoder.layer.{i}", f"layers.{i}"
        table += fused([f"{s}.attention.self.{p}" for p in ("query", "key", "value")], [f"{d}.attn.qkv"])
        table += linear(f"{s}.crossattention.self.query", f"{d}.cross.q")
        table += fused([f"{s}.crossattention.self.{p}" for p in ("key", "value")], [f"{d}.cross.kv"])
        for theirs, ours in (("attention.output.dense", "attn_out.dense"), ("attention.output.LayerNorm", "attn_out.ln"),
                             ("crossattention.output.dense", "cross_out.dense"),
                             ("crossattention.output.LayerNorm", "cross_out.ln"),
                             ("intermediate.dense", "ffn_text.fc1"), ("output.dense", "ffn_text.out.dense"),
                             ("output.LayerNorm", "ffn_text.out.ln"), ("intermediate_query.dense", "ffn_query.fc1"),
                             ("output_query.dense", "ffn_query.out.dense"),
                             ("output_query.LayerNorm", "ffn_query.out.ln")):
            table += linear(f"{s}.{theirs}", f"{d}.{ours}")
    table += linear("cls.predictions.transform.dense", "lm_head.dense")
    table += linear("cls.predictions.transform.LayerNorm", "lm_head.ln")
    return table + KeyTable.of([("cls.predictions.bias", "lm_head.bias")])


def read_bert_folder(folder: str | Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config.json, state dict) of a Hugging Face BERT folder; clear errors for anything else."""
    folder = Path(folder).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise NotABertCheckpoint(f"{folder} is not a Hugging Face BERT folder: no config.json. Expected "
                                 f"config.json, vocab.txt and model.safetensors (or pytorch_model.bin), e.g. "
                                 f"bert-base-uncased from https://huggingface.co/bert-base-uncased")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NotABertCheckpoint(f"{cfg_file} is not a JSON config ({e}); is the folder complete?") from None
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        kind = config.get("model_type") if isinstance(config, dict) else config
        raise NotABertCheckpoint(f"{cfg_file}: model_type is {kind!r}, not 'bert'")
    weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    if not weights:
        raise NotABertCheckpoint(f"{folder}: no model.safetensors or pytorch_model.bin weights")
    try:
        state = read_weights(weights[0], "BERT weights")
    except CheckpointError as e:
        raise NotABertCheckpoint(str(e)) from None
    # BertModel saves its keys bare, BertForMaskedLM under bert. and cls.: one naming, BertLMHeadModel's
    state = {k if k.startswith(("bert.", "cls.")) else f"bert.{k}": v for k, v in state.items()}
    return config, state


BERT_SIZE_KEYS = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
                  "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
                  "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings"}


def load_bert(qformer: QFormer, folder: str | Path) -> List[str]:
    """Initialise from a BERT checkpoint: embeddings, self-attention and the text feed-forward from BERT, the
    query feed-forward copied from the text one, cross-attention left new. A Q-Former with fewer layers than
    the BERT takes its first layers. Returns the BERT keys not used."""
    config, state = read_bert_folder(folder)
    ours = {"hidden_size": qformer.hidden_size, "num_layers": len(qformer.layers), "num_heads": qformer.num_heads,
            "intermediate_size": qformer.layers[0].ffn_text.fc1.out_features, "vocab_size": qformer.vocab_size,
            "max_position_embeddings": qformer.position_embeddings.num_embeddings}
    # a shallower Q-Former takes the BERT's first layers; every other size must match
    wrong = [f"{ours_key}: {ours[ours_key]} (BERT {bert_key}: {config.get(bert_key)})"
             for bert_key, ours_key in BERT_SIZE_KEYS.items() if config.get(bert_key) != ours[ours_key]
             and not (ours_key == "num_layers" and ours[ours_key] < config.get(bert_key, 0))]
    if wrong:
        raise NotABertCheckpoint(f"the Q-Former's sizes do not match the BERT checkpoint {folder}: "
                                 + "; ".join(wrong) + ". Set those Q-Former keys to the checkpoint's values.")
    out, unused = qformer_keys(len(qformer.layers)).to_ours(state, f"BERT checkpoint {folder}", NotABertCheckpoint)
    own = qformer.state_dict()
    # the [DEC] token that starts ITG text is one row past BERT's vocabulary: it starts as initialised
    out["word_embeddings.weight"] = torch.cat([out["word_embeddings.weight"], own["word_embeddings.weight"][-1:]])
    if "lm_head.bias" in out:
        out["lm_head.bias"] = torch.cat([out["lm_head.bias"], out["lm_head.bias"].new_zeros(1)])
    # BERT adds segment embedding 0 to every token; the Q-Former has no segments, so it is folded into the
    # position embeddings: the text path then computes exactly what BERT computes (LAVIS drops it instead)
    segment = state.get("bert.embeddings.token_type_embeddings.weight")
    if segment is not None:
        out["position_embeddings.weight"] = out["position_embeddings.weight"] + segment[0]
        unused.remove("bert.embeddings.token_type_embeddings.weight")
    for key in [k for k in out if ".ffn_text." in k]:  # the query feed-forward starts as a copy of the text one
        out[key.replace(".ffn_text.", ".ffn_query.")] = out[key]
    wrong = sorted(k for k in out if k not in own or out[k].shape != own[k].shape)
    if wrong:
        raise NotABertCheckpoint(f"BERT checkpoint {folder} does not fit the Q-Former: {', '.join(wrong[:6])}")
    qformer.load_state_dict(out, strict=False)
    return [k.removeprefix("bert.") for k in unused]
