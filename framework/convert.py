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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from framework import checkpoint
from framework.config import ConfigError
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


def hf_to_ours(src: Path, out: Path) -> Path:
    """Convert a ``Blip2ForConditionalGeneration`` folder; returns the written ``model.yaml``."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers import Blip2ForConditionalGeneration

    if not (src / "config.json").is_file():
        raise ConfigError(f"--src {src}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(str(src))
    if config.model_type != "blip-2":
        raise ConfigError(f"--src {src} holds a {config.model_type!r} model; --from hf reads Blip2 folders")
    adapter = LLM_ADAPTERS.get(config.text_config.model_type)
    if adapter is None:
        raise ConfigError(f"--src {src}: language model {config.text_config.model_type!r} has no adapter here "
                          f"(known: {', '.join(LLM_ADAPTERS)})")
    hf = Blip2ForConditionalGeneration.from_pretrained(str(src), dtype=torch.float32)
    state = hf.state_dict()
    out.mkdir(parents=True, exist_ok=True)
    vision, vision_left = vision_from_hf(split_prefix(state, "vision_model."))
    torch.save(vision, out / "vision.pt")
    qformer, qformer_left = state_from_hf_qformer(split_prefix(state, "qformer."), state["query_tokens"])
    ours = {f"qformer.{k}": v for k, v in qformer.items()}
    ours["ln_vision.weight"] = state["vision_model.post_layernorm.weight"]
    ours["ln_vision.bias"] = state["vision_model.post_layernorm.bias"]
    ours["llm_proj.weight"], ours["llm_proj.bias"] = state["language_projection.weight"], state["language_projection.bias"]
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "model_name": "blip2_generative", "model": ours,
                            "frozen": ["visual_encoder", "llm"], "iter": 0, "converted_from": str(src)},
                           out / "model.pt")
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
    checkpoint.save_atomic({"format": checkpoint.FORMAT,
                            "model_name": "blip2_generative" if generative else "blip2_qformer", "model": model,
                            "frozen": ["visual_encoder", "llm"] if generative else ["visual_encoder"], "iter": 0,
                            "converted_from": str(src)}, out / "model.pt")
    if vision:
        torch.save(vision, out / "vision.pt")
    print(f"converted {src} -> {out}: {len(model)} tensors into model.pt"
          + (f", {len(vision)} into vision.pt (model.image_encoder.checkpoint)" if vision else ""))
    for reason in sorted(set(dropped.values())):
        keys = [k for k, r in dropped.items() if r == reason]
        print(f"  left out, {reason}: {len(keys)} keys ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    print(f"use it: model.checkpoint={out / 'model.pt'} with the matching projects/blip2 config"
          + ("" if generative else " (blip2_qformer)"))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="framework.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", choices=["hf", "lavis"], required=True)
    p.add_argument("--to", dest="target", choices=["ours"], required=True)
    p.add_argument("--src", required=True, help="the folder (or file) to read")
    p.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args(argv)
    try:
        if args.source == "hf":
            hf_to_ours(Path(args.src), Path(args.out))
        else:
            convert_lavis(Path(args.src), Path(args.out))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
