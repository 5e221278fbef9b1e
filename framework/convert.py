"""``python -m framework.convert``: bring weights people already have into this framework.

    python -m framework.convert --from lavis --to ours --src blip2_pretrained.pth --out converted/

reads a LAVIS checkpoint (stage-1 ``blip2``, ``blip2_opt``, ``blip2_t5``: keys under ``visual_encoder.``,
``ln_vision.``, ``Qformer.bert.``, ``Qformer.cls.``, ``query_tokens``, ``vision_proj``, ``text_proj``, ``itm_head``,
``temp``, ``opt_proj`` / ``t5_proj``) and writes our ``model.pt`` (and ``vision.pt`` when it holds the image
encoder); LAVIS checkpoints hold no LLM weights, so the config's ``llm.path`` names the LLM folder.

    python -m framework.convert --from hf --to ours --src blip2-opt-2.7b/ --out converted/

reads a Hugging Face ``Blip2ForConditionalGeneration`` folder (``save_pretrained`` / the Hub's files) and writes:

* ``model.yaml`` — a ``model:`` section to inherit (``_base_: converted/model.yaml``) that builds the same
  network: ``eva_vit_g`` and Q-Former sizes from the folder's config, the ``opt`` or ``flant5`` adapter;
* ``vision.pt`` — the image encoder in EVA's key names (``image_encoder.checkpoint``);
* ``llm/`` — the language model and its tokenizer, written with ``save_pretrained`` (``llm.path``);
* ``model.pt`` — our checkpoint of ``ln_vision`` (HF's ``post_layernorm``), the Q-Former and the projection.

Every source key is placed or reported by name; the counts per part are printed.

    python -m framework.convert --from ours --to hf --src experiment.yaml --out blip2-hf/

writes the experiment's ``blip2_generative`` model (``model.checkpoint`` loaded) as a ``Blip2ForConditionalGeneration``
folder that transformers' ``from_pretrained`` reads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from framework import checkpoint
from framework.errors import USER_ERRORS, ConfigError
from framework.models.qformer import state_from_hf_qformer

LLM_ADAPTERS = {"opt": "opt", "t5": "flant5"}  # HF text_config.model_type -> our adapter


def split_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def vision_from_hf(hf: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """HF ``Blip2VisionModel`` keys (below ``vision_model.``) -> EVA's, and the keys with no place there.
    HF stores one qkv bias; EVA has q and v biases only: a key bias shifts every attention logit of a query
    by the same amount, which softmax ignores, so dropping it is exact."""
    out, used = {}, set()

    def take(src: str, dst: str) -> None:
        out[dst] = hf[src]
        used.add(src)

    take("embeddings.class_embedding", "cls_token")
    take("embeddings.position_embedding", "pos_embed")
    take("embeddings.patch_embedding.weight", "patch_embed.proj.weight")
    take("embeddings.patch_embedding.bias", "patch_embed.proj.bias")
    layers = sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.")})
    for i in layers:
        s, d = f"encoder.layers.{i}", f"blocks.{i}"
        take(f"{s}.self_attn.qkv.weight", f"{d}.attn.qkv.weight")
        if f"{s}.self_attn.qkv.bias" in hf:
            q, _, v = hf[f"{s}.self_attn.qkv.bias"].chunk(3)
            out[f"{d}.attn.q_bias"], out[f"{d}.attn.v_bias"] = q, v
            used.add(f"{s}.self_attn.qkv.bias")
        else:  # older exports: separate q and v biases
            take(f"{s}.self_attn.q_bias", f"{d}.attn.q_bias")
            take(f"{s}.self_attn.v_bias", f"{d}.attn.v_bias")
        for src, dst in (("self_attn.projection", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                take(f"{s}.{src}.{p}", f"{d}.{dst}.{p}")
    return out, sorted(set(hf) - used - {"post_layernorm.weight", "post_layernorm.bias"})


def _model_section(config, out: Path, adapter: str) -> dict:
    v, q = config.vision_config, config.qformer_config
    return {"model": {
        "name": "blip2_generative",
        "image_encoder": {"name": "eva_vit_g", "image_size": v.image_size, "patch_size": v.patch_size,
                          "width": v.hidden_size, "depth": v.num_hidden_layers, "heads": v.num_attention_heads,
                          "mlp_dim": v.intermediate_size, "freeze": True, "precision": "fp16",
                          "checkpoint": str(out / "vision.pt")},
        "qformer": {"hidden_size": q.hidden_size, "num_layers": q.num_hidden_layers,
                    "num_heads": q.num_attention_heads, "intermediate_size": q.intermediate_size,
                    "vocab_size": q.vocab_size, "num_query_tokens": config.num_query_tokens,
                    "cross_attention_freq": q.cross_attention_frequency,
                    "max_position_embeddings": q.max_position_embeddings, "layer_norm_eps": q.layer_norm_eps,
                    "bert": None, "init_from_bert": False},
        "stage1_checkpoint": None,
        "llm": {"name": adapter, "path": str(out / "llm"), "precision": "bf16" if adapter == "flant5" else "fp16"},
        "checkpoint": str(out / "model.pt"),
    }}


def _read_hf(from_pretrained, src: Path, **kwargs):
    """transformers' ``from_pretrained`` on a local folder; a corrupt or incomplete folder is named, not a
    traceback from deep inside transformers."""
    try:
        return from_pretrained(str(src), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # what transformers / safetensors raise for bad files
        raise ConfigError(f"--src {src}: transformers cannot read it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); is the folder complete and written by save_pretrained?") from None


def hf_retrieval_to_ours(src: Path, out: Path, config) -> Path:
    """A ``Blip2ForImageTextRetrieval`` folder into ``blip2_qformer`` (ITC + ITM; it has no ITG head)."""
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    state = _read_hf(Blip2ForImageTextRetrieval.from_pretrained, src, dtype=torch.float32).state_dict()
    out.mkdir(parents=True, exist_ok=True)
    vision, vision_left = vision_from_hf(split_prefix(state, "vision_model."))
    torch.save(vision, out / "vision.pt")
    qformer_state = split_prefix(state, "qformer.") | {f"embeddings.{k}": v for k, v in
                                                       split_prefix(state, "embeddings.").items()}
    qformer, left = state_from_hf_qformer(qformer_state, state["query_tokens"])
    ours = {f"qformer.{k}": v for k, v in qformer.items()}
    ours |= {"ln_vision.weight": state["vision_model.post_layernorm.weight"],
             "ln_vision.bias": state["vision_model.post_layernorm.bias"], "temp": torch.tensor(0.07)}
    for theirs, mine in (("vision_projection", "vision_proj"), ("text_projection", "text_proj"),
                         ("itm_head", "itm_head")):
        for p in ("weight", "bias"):
            ours[f"{mine}.{p}"] = state[f"{theirs}.{p}"]
    left = [f"vision_model.{k}" for k in vision_left] + [f"qformer.{k}" for k in left]
    if left:
        raise ConfigError(f"{len(left)} keys of {src} have no place in our model: {', '.join(left[:12])}")
    checkpoint.save_atomic(checkpoint.make("blip2_qformer", ours, ["visual_encoder"], iter=0,
                                           converted_from=str(src)), out / "model.pt")
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.save_pretrained(str(out / "tokenizer"))
    section = _model_section(config, out, "")["model"]
    section.pop("llm"), section.pop("stage1_checkpoint")
    section["name"] = "blip2_qformer"
    section["qformer"] |= {"vocab_size": len(tok) - ("[DEC]" in tok.get_vocab()), "bert": str(out / "tokenizer")}
    section |= {"embed_dim": config.image_text_hidden_size, "losses": ["itc", "itm"]}
    (out / "model.yaml").write_text(f"# converted from {src} by python -m framework.convert\n"
                                    + yaml.safe_dump({"model": section}, sort_keys=False))
    print(f"converted {src} (Blip2ForImageTextRetrieval) -> {out}: {len(vision)} vision tensors, {len(ours)} others")
    return out / "model.yaml"


def hf_to_ours(src: Path, out: Path) -> Path:
    """Convert a ``Blip2ForConditionalGeneration`` folder; returns the written ``model.yaml``."""
    from transformers import AutoConfig, AutoTokenizer, Blip2ForConditionalGeneration

    if not (src / "config.json").is_file():
        raise ConfigError(f"--src {src}: not a Hugging Face model folder (no config.json)")
    config = _read_hf(AutoConfig.from_pretrained, src)
    if config.model_type != "blip-2":
        raise ConfigError(f"--src {src} holds a {config.model_type!r} model; --from hf reads Blip2 folders")
    if "Blip2ForImageTextRetrieval" in (config.architectures or []):
        return hf_retrieval_to_ours(src, out, config)
    adapter = LLM_ADAPTERS.get(config.text_config.model_type)
    if adapter is None:
        raise ConfigError(f"--src {src}: language model {config.text_config.model_type!r} has no adapter here "
                          f"(known: {', '.join(LLM_ADAPTERS)})")
    hf = _read_hf(Blip2ForConditionalGeneration.from_pretrained, src, dtype=torch.float32)
    state = hf.state_dict()
    out.mkdir(parents=True, exist_ok=True)
    vision, vision_left = vision_from_hf(split_prefix(state, "vision_model."))
    torch.save(vision, out / "vision.pt")
    qformer, qformer_left = state_from_hf_qformer(split_prefix(state, "qformer."), state["query_tokens"])
    ours = {f"qformer.{k}": v for k, v in qformer.items()}
    ours["ln_vision.weight"] = state["vision_model.post_layernorm.weight"]
    ours["ln_vision.bias"] = state["vision_model.post_layernorm.bias"]
    ours["llm_proj.weight"], ours["llm_proj.bias"] = state["language_projection.weight"], state["language_projection.bias"]
    checkpoint.save_atomic(checkpoint.make("blip2_generative", ours, ["visual_encoder", "llm"], iter=0,
                                           converted_from=str(src)), out / "model.pt")
    hf.language_model.save_pretrained(str(out / "llm"))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out / "llm"))
    left = [f"vision_model.{k}" for k in vision_left] + [f"qformer.{k}" for k in qformer_left]
    if left:
        raise ConfigError(f"{len(left)} keys of {src} have no place in our model: {', '.join(left[:12])}")
    section = _model_section(config, out, adapter)
    (out / "model.yaml").write_text(f"# converted from {src} by python -m framework.convert\n"
                                    + yaml.safe_dump(section, sort_keys=False))
    counts = {"vision_model": len(vision), "qformer + query_tokens": len(qformer), "ln_vision + projection": 4,
              "language_model": len(split_prefix(state, "language_model."))}
    print(f"converted {src} -> {out}")
    for part, n in counts.items():
        print(f"  {part:24s} {n:6d} tensors")
    print(f"use it: _base_: {out / 'model.yaml'}")
    return out / "model.yaml"


# LAVIS's Q-Former is a BertModel under ``Qformer.bert.``; these renames give transformers' Blip2QFormer names
LAVIS_QFORMER_RENAMES = [(".attention.self.", ".attention.attention."), (".crossattention.self.", ".crossattention.attention."),
                         ("embeddings.LayerNorm.", "embeddings.layernorm.")]
LAVIS_DROPPED = {"Qformer.bert.embeddings.position_ids": "a buffer (positions 0..511)",
                 "Qformer.cls.predictions.decoder.weight": "tied to the word embeddings",
                 "Qformer.cls.predictions.decoder.bias": "the same tensor as cls.predictions.bias"}
LAVIS_HEADS = {"vision_proj.": "vision_proj.", "text_proj.": "text_proj.", "itm_head.": "itm_head.",
               "opt_proj.": "llm_proj.", "t5_proj.": "llm_proj.", "ln_vision.": "ln_vision."}


def lavis_to_ours(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor],
                                                            Dict[str, str]]:
    """A LAVIS BLIP-2 state dict (``blip2``, ``blip2_opt``, ``blip2_t5``) as (our model weights, the image
    encoder in EVA's key names, {left-out key: why}). A key with no place raises, naming it."""
    model, vision, dropped, unknown = {}, {}, {}, []
    bert = {}
    for key, value in state.items():
        if key in LAVIS_DROPPED:
            dropped[key] = LAVIS_DROPPED[key]
        elif key.startswith(("opt_model.", "t5_model.")):
            dropped[key] = "the frozen LLM (our config names its folder)"
        elif key.startswith("visual_encoder."):
            vision[key[len("visual_encoder."):]] = value
        elif key.startswith("Qformer.bert."):
            name = key[len("Qformer.bert."):]
            for old, new in LAVIS_QFORMER_RENAMES:
                name = name.replace(old, new)
            bert[name] = value
        elif key.startswith("Qformer.cls.predictions."):
            rest = key[len("Qformer.cls.predictions."):]
            target = {"bias": "qformer.lm_head.bias", "transform.dense.weight": "qformer.lm_head.dense.weight",
                      "transform.dense.bias": "qformer.lm_head.dense.bias",
                      "transform.LayerNorm.weight": "qformer.lm_head.ln.weight",
                      "transform.LayerNorm.bias": "qformer.lm_head.ln.bias"}.get(rest)
            if target is None:
                unknown.append(key)
            else:
                model[target] = value
        elif key == "query_tokens":
            model["qformer.query_tokens"] = value
        elif key == "temp":
            model["temp"] = value
        else:
            head = next((h for h in LAVIS_HEADS if key.startswith(h)), None)
            if head is None:
                unknown.append(key)
            else:
                model[LAVIS_HEADS[head] + key[len(head):]] = value
    try:
        qformer, left = state_from_hf_qformer(bert)
    except ConfigError as e:
        raise ConfigError(f"the LAVIS checkpoint's Q-Former (under Qformer.bert.; names as transformers spells "
                          f"them): {e}") from None
    unknown += [f"Qformer.bert.{k}" for k in left]
    if unknown:
        raise ConfigError(f"{len(unknown)} keys of the LAVIS checkpoint have no place in our model: "
                          f"{', '.join(sorted(unknown)[:12])}")
    model.update({f"qformer.{k}": v for k, v in qformer.items()})
    return model, vision, dropped


def convert_lavis(src: Path, out: Path) -> None:
    """Write our checkpoint (``model.pt``) and the image encoder in EVA's key names (``vision.pt``)."""
    from framework.models.image_encoder import read_state_dict

    if not src.is_file():
        raise ConfigError(f"--src {src}: no such file (a LAVIS .pth checkpoint)")
    state = read_state_dict(src)
    model, vision, dropped = lavis_to_ours(state)
    generative = "llm_proj.weight" in model
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic(checkpoint.make("blip2_generative" if generative else "blip2_qformer", model,
                                           ["visual_encoder", "llm"] if generative else ["visual_encoder"], iter=0,
                                           converted_from=str(src)), out / "model.pt")
    if vision:
        torch.save(vision, out / "vision.pt")
    print(f"converted {src} -> {out}: {len(model)} tensors into model.pt"
          + (f", {len(vision)} into vision.pt (model.image_encoder.checkpoint)" if vision else ""))
    for reason in sorted(set(dropped.values())):
        keys = [k for k, r in dropped.items() if r == reason]
        print(f"  left out, {reason}: {len(keys)} keys ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    print(f"use it: model.checkpoint={out / 'model.pt'} with the matching projects/blip2 config"
          + ("" if generative else " (blip2_qformer)"))


def hf_qformer_from_ours(q: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our Q-Former (queries only, as stage 2 keeps it) in transformers' ``Blip2QFormerModel`` names."""
    out = {f"layernorm.{p}": q[f"emb_ln.{p}"] for p in ("weight", "bias")}
    layers = sorted({int(k.split(".")[1]) for k in q if k.startswith("layers.")})
    for i in layers:
        s, d = f"encoder.layer.{i}", f"layers.{i}"
        for p in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), q[f"{d}.attn.qkv.{p}"].chunk(3)):
                out[f"{s}.attention.attention.{name}.{p}"] = part
            pairs = {"attn_out.dense": "attention.output.dense", "attn_out.ln": "attention.output.LayerNorm",
                     "ffn_query.fc1": "intermediate_query.dense", "ffn_query.out.dense": "output_query.dense",
                     "ffn_query.out.ln": "output_query.LayerNorm"}
            if f"{d}.ffn_text.fc1.{p}" in q:  # a Q-Former that reads text (stage 1, retrieval)
                pairs |= {"ffn_text.fc1": "intermediate.dense", "ffn_text.out.dense": "output.dense",
                          "ffn_text.out.ln": "output.LayerNorm"}
            if f"{d}.cross.q.{p}" in q:
                out[f"{s}.crossattention.attention.query.{p}"] = q[f"{d}.cross.q.{p}"]
                key, value = q[f"{d}.cross.kv.{p}"].chunk(2)
                out[f"{s}.crossattention.attention.key.{p}"] = key
                out[f"{s}.crossattention.attention.value.{p}"] = value
                pairs |= {"cross_out.dense": "crossattention.output.dense",
                          "cross_out.ln": "crossattention.output.LayerNorm"}
            for ours, theirs in pairs.items():
                out[f"{s}.{theirs}.{p}"] = q[f"{d}.{ours}.{p}"]
    return out


def _hf_configs(model, text_input: bool) -> Tuple[dict, dict]:
    """transformers' vision and Q-Former configs (as dicts) of our model's encoder and Q-Former."""
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vit, qf = model.visual_encoder.vit, model.qformer
    vision = Blip2VisionConfig(hidden_size=vit.embed_dim, intermediate_size=vit.blocks[0].mlp.fc1.out_features,
                               num_hidden_layers=len(vit.blocks), num_attention_heads=vit.blocks[0].attn.num_heads,
                               image_size=model.visual_encoder.image_size, patch_size=vit.patch_embed.patch_size[0],
                               layer_norm_eps=vit.blocks[0].norm1.eps)
    cross_freq = next((i for i, layer in enumerate(qf.layers[1:], 1) if layer.cross is not None), len(qf.layers))
    extra = {"vocab_size": qf.word_embeddings.num_embeddings,
             "max_position_embeddings": qf.position_embeddings.num_embeddings} if text_input else {}
    qformer = Blip2QFormerConfig(hidden_size=qf.hidden_size, num_hidden_layers=len(qf.layers),
                                 num_attention_heads=qf.num_heads,
                                 intermediate_size=qf.layers[0].ffn_query.fc1.out_features,
                                 encoder_hidden_size=vit.embed_dim, cross_attention_frequency=cross_freq,
                                 layer_norm_eps=qf.emb_ln.eps, use_qformer_text_input=text_input, **extra)
    return vision.to_dict(), qformer.to_dict()


def _shared_hf_state(ours: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Vision tower, ``post_layernorm`` (our ``ln_vision``), Q-Former and queries, in transformers' names."""
    state = {f"vision_model.{k}": v for k, v in _hf_vision(ours).items()}
    state |= {f"qformer.{k}": v for k, v in hf_qformer_from_ours(split_prefix(ours, "qformer.")).items()}
    state |= {"query_tokens": ours["qformer.query_tokens"],
              "vision_model.post_layernorm.weight": ours["ln_vision.weight"],
              "vision_model.post_layernorm.bias": ours["ln_vision.bias"]}
    return state


def _save_hf(hf, state: Dict[str, torch.Tensor], tok, out: Path, tied: Tuple[str, ...] = ()) -> Path:
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(tied)]
    if missing or unexpected:
        raise ConfigError(f"export to {type(hf).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"wrote {out}: {type(hf).__name__} ({sum(p.numel() for p in hf.parameters()):,} parameters)")
    return out


def ours_to_hf_retrieval(model, out: Path) -> Path:
    """A ``blip2_qformer`` model as a ``Blip2ForImageTextRetrieval`` folder (ITC + ITM)."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    vision, qformer = _hf_configs(model, text_input=True)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=model.qformer.num_query_tokens,
                         image_text_hidden_size=model.vision_proj.out_features)
    ours = {k: v.float() for k, v in model.state_dict().items()}
    state = _shared_hf_state(ours)
    for key in ("word_embeddings", "position_embeddings"):
        state[f"embeddings.{key}.weight"] = ours[f"qformer.{key}.weight"]
    for theirs, mine in (("vision_projection", "vision_proj"), ("text_projection", "text_proj"), ("itm_head", "itm_head")):
        for p in ("weight", "bias"):
            state[f"{theirs}.{p}"] = ours[f"{mine}.{p}"]
    return _save_hf(Blip2ForImageTextRetrieval(config), state, model.tokenizer, out)


def ours_to_hf(model, out: Path) -> Path:
    """Write a ``blip2_generative`` model (EVA-style encoder) as a ``Blip2ForConditionalGeneration`` folder
    that transformers loads with ``from_pretrained``; a ``blip2_qformer`` as ``Blip2ForImageTextRetrieval``."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    if hasattr(model, "itm_head"):
        return ours_to_hf_retrieval(model, out)
    qf, llm = model.qformer, model.llm
    tok = llm.tokenizer
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if len(tok) > llm.model.get_input_embeddings().num_embeddings:
        llm.model.resize_token_embeddings(len(tok))
    vision, qformer = _hf_configs(model, text_input=False)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=llm.model.config.to_dict(),
                         num_query_tokens=qf.num_query_tokens, image_token_index=tok.convert_tokens_to_ids("<image>"))
    ours = {k: v.float() for k, v in model.state_dict().items()}
    state = _shared_hf_state(ours)
    state |= {"language_projection.weight": ours["llm_proj.weight"], "language_projection.bias": ours["llm_proj.bias"]}
    state |= {f"language_model.{k}": v for k, v in llm.model.state_dict().items()}
    return _save_hf(Blip2ForConditionalGeneration(config), state, tok, out, tied=("lm_head.weight",))


def _hf_vision(ours: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our EVA encoder (``visual_encoder.vit.``) in ``Blip2VisionModel`` names; the key bias is zero."""
    v = split_prefix(ours, "visual_encoder.vit.")
    out = {"embeddings.class_embedding": v["cls_token"], "embeddings.position_embedding": v["pos_embed"],
           "embeddings.patch_embedding.weight": v["patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": v["patch_embed.proj.bias"]}
    for i in sorted({int(k.split(".")[1]) for k in v if k.startswith("blocks.")}):
        s, d = f"encoder.layers.{i}", f"blocks.{i}"
        q_bias = v[f"{d}.attn.q_bias"]
        out[f"{s}.self_attn.qkv.weight"] = v[f"{d}.attn.qkv.weight"]
        out[f"{s}.self_attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v[f"{d}.attn.v_bias"]])
        for theirs, mine in (("self_attn.projection", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{s}.{theirs}.{p}"] = v[f"{d}.{mine}.{p}"]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="framework.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", choices=["hf", "lavis", "ours"], required=True)
    p.add_argument("--to", dest="target", choices=["ours", "hf"], required=True)
    p.add_argument("--src", required=True, help="the folder or file to read; --from ours: an experiment YAML whose "
                                                "model (with model.checkpoint) is exported")
    p.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args(argv)
    try:
        if (args.source, args.target) == ("hf", "ours"):
            hf_to_ours(Path(args.src), Path(args.out))
        elif (args.source, args.target) == ("lavis", "ours"):
            convert_lavis(Path(args.src), Path(args.out))
        elif (args.source, args.target) == ("ours", "hf"):
            from framework.cli import load_experiment
            from framework.models.build import build_model

            exp = load_experiment(args.src)
            model = build_model(exp.model)
            if not (hasattr(model, "itm_head") or hasattr(model, "llm")):
                raise ConfigError(f"--src {args.src} builds model {exp.model['name']!r}; --to hf exports "
                                  f"blip2_generative (as Blip2ForConditionalGeneration) and blip2_qformer (as "
                                  f"Blip2ForImageTextRetrieval) models")
            ours_to_hf(model, Path(args.out))
        else:
            raise ConfigError(f"--from {args.source} --to {args.target} is not a conversion this command makes "
                              f"(hf->ours, lavis->ours, ours->hf)")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
