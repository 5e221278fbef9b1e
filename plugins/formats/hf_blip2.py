"""``hf``: transformers' BLIP-2 and InstructBLIP folders (``save_pretrained`` / the Hub's files), read and written.

``Blip2ForConditionalGeneration`` (OPT or T5) <-> ``blip2_generative``; ``Blip2ForImageTextRetrieval`` (ITC + ITM)
<-> ``blip2_qformer``; ``InstructBlipForConditionalGeneration`` (Vicuna / LLaMA or T5) <-> ``blip2_generative``
with ``qformer_text_input`` (its Q-Former's embeddings are ``qformer.embeddings.``, its tokenizer the folder's
``qformer_tokenizer/``). transformers names the EVA encoder ``vision_model.`` (one ``qkv`` bias, whose key part is
zero: EVA keeps query and value biases only; a key bias shifts every attention logit of a query alike, which
softmax ignores, so dropping it is exact), the Q-Former ``qformer.`` (BERT's names with three renames) and the
text embeddings of the retrieval model ``embeddings.``.

Reading writes ``vision.pt`` (the encoder in EVA's names), ``model.pt`` (``ln_vision`` = their
``post_layernorm``, the Q-Former, the heads), ``llm/`` (the language model and tokenizer, ``save_pretrained``) or
``tokenizer/`` (retrieval), and the ``model:`` section built from the folder's config.json. Writing gives a
folder transformers' ``from_pretrained`` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from framework.core import checkpoint
from framework.core.errors import ConfigError
from framework.core.registry import FORMATS
from framework.interop.formats import Converted, Format, split_prefix
from framework.models.bert import qformer_keys
from framework.models.keys import KeyTable, layer_indices, linear
from framework.models.qformer import text_path

LLM_ADAPTERS = {"opt": "opt", "t5": "flant5", "llama": "llama"}  # their text_config.model_type -> our LLM adapter
# transformers' Blip2 Q-Former is BERT's with these names changed; it has no ITG head (cls.)
QFORMER_RENAMES = [("bert.embeddings.LayerNorm.", "qformer.layernorm."),
                   ("bert.embeddings.word_embeddings.", "embeddings.word_embeddings."),
                   ("bert.embeddings.position_embeddings.", "embeddings.position_embeddings."),
                   ("bert.encoder.", "qformer.encoder."), (".attention.self.", ".attention.attention."),
                   (".crossattention.self.", ".crossattention.attention."), ("cls.", None)]
# InstructBLIP's Q-Former keeps its embeddings under qformer.embeddings.
INSTRUCT_RENAMES = [("bert.embeddings.LayerNorm.", "qformer.embeddings.layernorm."),
                    ("bert.embeddings.word_embeddings.", "qformer.embeddings.word_embeddings."),
                    ("bert.embeddings.position_embeddings.", "qformer.embeddings.position_embeddings.")]
INSTRUCT_LENGTHS = {"max_txt_len": 128, "max_output_txt_len": 256}  # LAVIS's InstructBLIP defaults (LLM side)
HEADS = {"vision_model.post_layernorm": "ln_vision", "language_projection": "llm_proj",
         "vision_projection": "vision_proj", "text_projection": "text_proj", "itm_head": "itm_head"}


def vision_keys(depth: int) -> KeyTable:
    """``Blip2VisionModel`` (theirs) and EVA's names (ours, as timm's ``Eva`` and EVA-CLIP's checkpoints spell
    them), the final ``post_layernorm`` aside (our ``ln_vision``)."""
    table = KeyTable.of([("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed")])
    table += linear("embeddings.patch_embedding", "patch_embed.proj")
    for i in range(depth):
        s, d = f"encoder.layers.{i}", f"blocks.{i}"
        table += KeyTable.of([(f"{s}.self_attn.qkv.weight", f"{d}.attn.qkv.weight")])
        table += KeyTable.of([(f"{s}.self_attn.qkv.bias", (f"{d}.attn.q_bias", None, f"{d}.attn.v_bias"))])
        for theirs, ours in (("self_attn.projection", "attn.proj"), ("layer_norm1", "norm1"),
                             ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            table += linear(f"{s}.{theirs}", f"{d}.{ours}")
    return table


def key_table(vision_depth: int, qformer_layers: int, instruct: bool = False) -> KeyTable:
    """Every key of a transformers BLIP-2 (``instruct``: InstructBLIP) but the language model's, ours beside it."""
    table = vision_keys(vision_depth).within("vision_model.", "image_encoder.vit.")
    renames = INSTRUCT_RENAMES + QFORMER_RENAMES[1:] if instruct else QFORMER_RENAMES
    table += qformer_keys(qformer_layers).renamed(renames).within("", "qformer.")
    table += KeyTable.of([("query_tokens", "qformer.query_tokens")])
    for theirs, ours in HEADS.items():
        table += linear(theirs, ours)
    return table


def hf_to_ours(state: Dict[str, torch.Tensor], what: str,
               instruct: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """A transformers BLIP-2 (``instruct``: InstructBLIP) state dict (the language model aside) as (our weights, the
    encoder in EVA's names)."""
    table = key_table(len(layer_indices(state, "vision_model.encoder.layers.")),
                      len(layer_indices(state, "qformer.encoder.layer.")), instruct)
    ours, unused = table.to_ours({k: v for k, v in state.items() if not k.startswith("language_model.")}, what,
                                 ConfigError)
    if unused:
        raise ConfigError(f"{len(unused)} keys of {what} have no place in our model: {', '.join(unused[:12])}")
    return ({k: v for k, v in ours.items() if not k.startswith("image_encoder.")},
            split_prefix(ours, "image_encoder.vit."))


def ours_to_hf(weights: Dict[str, torch.Tensor], instruct: bool = False) -> Dict[str, torch.Tensor]:
    """Our model's weights (the LLM aside) in transformers' names (``instruct``: InstructBLIP's). The ITG head has no
    place there: left out."""
    mine = {k: v for k, v in weights.items() if not k.startswith("llm.")}
    table = key_table(len(layer_indices(mine, "image_encoder.vit.blocks.")),
                      len(layer_indices(mine, "qformer.layers.")), instruct)
    state, unused = table.to_theirs(mine, "our model", ConfigError)
    unused = [k for k in unused if not k.startswith("qformer.lm_head.") and k != "temp"]
    if unused:
        raise ConfigError(f"--to hf: {len(unused)} of our keys have no place in a transformers BLIP-2: "
                          f"{', '.join(unused[:12])} (an EVA-style image encoder is needed: eva_vit_g)")
    return state


def _read_hf(from_pretrained, src: Path, **kwargs):
    """transformers' ``from_pretrained`` on a local folder; a corrupt or incomplete folder is named, not a
    traceback from deep inside transformers."""
    try:
        return from_pretrained(str(src), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # what transformers / safetensors raise for bad files
        raise ConfigError(f"--src {src}: transformers cannot read it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); is the folder complete and written by save_pretrained?") from None


def _section(config, out: Path) -> Dict[str, Any]:
    """The ``model:`` section of the image encoder and Q-Former a transformers config describes."""
    v, q = config.vision_config, config.qformer_config
    return {"image_encoder": {"name": "eva_vit_g", "image_size": v.image_size, "patch_size": v.patch_size,
                              "width": v.hidden_size, "depth": v.num_hidden_layers, "heads": v.num_attention_heads,
                              "mlp_dim": v.intermediate_size, "freeze": True, "precision": "fp16",
                              "checkpoint": str(out / "vision.pt")},
            "qformer": {"hidden_size": q.hidden_size, "num_layers": q.num_hidden_layers,
                        "num_heads": q.num_attention_heads, "intermediate_size": q.intermediate_size,
                        "vocab_size": q.vocab_size, "num_query_tokens": config.num_query_tokens,
                        "cross_attention_freq": q.cross_attention_frequency,
                        "max_position_embeddings": q.max_position_embeddings, "layer_norm_eps": q.layer_norm_eps,
                        "bert": None, "init_from_bert": False},
            "checkpoint": str(out / "model.pt")}


def _configs(model: nn.Module, text_input: bool, instruct: bool = False) -> Tuple[dict, dict]:
    """transformers' vision and Q-Former configs (as dicts) of our model's encoder and Q-Former (``instruct``:
    InstructBLIP's classes)."""
    from transformers import Blip2QFormerConfig, Blip2VisionConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig

    vit, qf = model.image_encoder.vit, model.qformer
    vision = (InstructBlipVisionConfig if instruct else Blip2VisionConfig)(
        hidden_size=vit.embed_dim, intermediate_size=vit.blocks[0].mlp.fc1.out_features,
        num_hidden_layers=len(vit.blocks), num_attention_heads=vit.blocks[0].attn.num_heads,
        image_size=model.image_encoder.image_size, patch_size=vit.patch_embed.patch_size[0],
        layer_norm_eps=vit.blocks[0].norm1.eps)
    cross_freq = next((i for i, layer in enumerate(qf.layers[1:], 1) if layer.cross is not None), len(qf.layers))
    extra = {"vocab_size": qf.word_embeddings.num_embeddings,
             "max_position_embeddings": qf.position_embeddings.num_embeddings} if text_input else {}
    sizes = dict(hidden_size=qf.hidden_size, num_hidden_layers=len(qf.layers), num_attention_heads=qf.num_heads,
                 intermediate_size=qf.layers[0].ffn_query.fc1.out_features, encoder_hidden_size=vit.embed_dim,
                 cross_attention_frequency=cross_freq, layer_norm_eps=qf.emb_ln.eps, **extra)
    qformer = InstructBlipQFormerConfig(**sizes) if instruct else \
        Blip2QFormerConfig(use_qformer_text_input=text_input, **sizes)
    return vision.to_dict(), qformer.to_dict()


def _save(hf, state: Dict[str, torch.Tensor], tok, out: Path, tied: Tuple[str, ...] = ()) -> None:
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(tied)]
    if missing or unexpected:
        raise ConfigError(f"export to {type(hf).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"wrote {out}: {type(hf).__name__} ({sum(p.numel() for p in hf.parameters()):,} parameters)")


@FORMATS.register("hf")
class HuggingFace(Format):
    reads = ("a transformers Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval or "
             "InstructBlipForConditionalGeneration folder")
    writes = "a folder transformers' from_pretrained reads"
    writes_llm = True  # the folder is the whole model, its language model included

    def read(self, src: Path, out: Path) -> Converted:
        from transformers import AutoConfig

        if not (src / "config.json").is_file():
            raise ConfigError(f"--src {src}: not a Hugging Face model folder (no config.json)")
        config = _read_hf(AutoConfig.from_pretrained, src)
        if config.model_type == "instructblip":
            return self._read_generative(src, out, config, instruct=True)
        if config.model_type != "blip-2":
            raise ConfigError(f"--src {src} holds a {config.model_type!r} model; --from hf reads Blip2 and "
                              f"InstructBlip folders")
        if "Blip2ForImageTextRetrieval" in (config.architectures or []):
            return self._read_retrieval(src, out, config)
        return self._read_generative(src, out, config)

    def _read_generative(self, src: Path, out: Path, config, instruct: bool = False) -> Converted:
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

        adapter = LLM_ADAPTERS.get(config.text_config.model_type)
        if adapter is None:
            raise ConfigError(f"--src {src}: language model {config.text_config.model_type!r} has no adapter here "
                              f"(known: {', '.join(LLM_ADAPTERS)})")
        if instruct and not (src / "qformer_tokenizer").is_dir():
            raise ConfigError(f"--src {src}: an InstructBLIP folder needs its Q-Former's tokenizer in "
                              f"qformer_tokenizer/ (InstructBlipProcessor.save_pretrained writes it)")
        cls = InstructBlipForConditionalGeneration if instruct else Blip2ForConditionalGeneration
        hf = _read_hf(cls.from_pretrained, src, dtype=torch.float32)
        state = hf.state_dict()
        model, vision = hf_to_ours(state, str(src), instruct)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(vision, out / "vision.pt")
        # what the stage-2 model deleted: a model that has it (InstructBLIP from BLIP-2 weights) keeps its own
        absent = [f"qformer.{p}" for p in text_path(len(layer_indices(model, "qformer.layers.")), instruct)]
        checkpoint.save_atomic(checkpoint.make("blip2_generative", model, ["image_encoder", "llm"], iter=0,
                                               converted_from=str(src), absent=absent), out / "model.pt")
        hf.language_model.save_pretrained(str(out / "llm"))
        tok = AutoTokenizer.from_pretrained(str(src))
        tok.save_pretrained(str(out / "llm"))
        section = {"name": "blip2_generative", **_section(config, out),
                   "llm": {"name": adapter, "path": str(out / "llm"),
                           "precision": "bf16" if adapter == "flant5" else "fp16"}}
        if adapter == "opt":  # where the checkpoint's text ends: the released blip2-opt say a newline (50118)
            section["llm"]["end_of_text"] = tok.decode([config.text_config.eos_token_id])
        elif adapter == "flant5":  # transformers runs FlanT5 with its config's activation (LAVIS overrides it)
            section["llm"]["activation"] = None
        else:  # the folder's tokenizer holds InstructBLIP's tokens already ("[PAD]", "</s>" first)
            section["llm"]["special_tokens"] = {}
        if instruct:  # the instruction through the Q-Former too; LAVIS's lengths, its cut keeping the end
            qtok = AutoTokenizer.from_pretrained(str(src / "qformer_tokenizer"))
            qtok.save_pretrained(str(out / "qformer_tokenizer"))
            section |= {"qformer_text_input": True, "max_txt_len": INSTRUCT_LENGTHS["max_txt_len"]}
            section["qformer"] |= {"vocab_size": len(qtok) - ("[DEC]" in qtok.get_vocab()),
                                   "bert": str(out / "qformer_tokenizer")}
            section["llm"] |= INSTRUCT_LENGTHS | ({"prompt_keeps": "end"} if adapter == "flant5" else {})
        return Converted(section, {"vision.pt": len(vision), "model.pt": len(model),
                                   "llm/": len(split_prefix(state, "language_model."))})

    def _read_retrieval(self, src: Path, out: Path, config) -> Converted:
        from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

        model, vision = hf_to_ours(_read_hf(Blip2ForImageTextRetrieval.from_pretrained, src,
                                            dtype=torch.float32).state_dict(), str(src))
        model["temp"] = torch.tensor(0.07)  # transformers keeps no temperature: LAVIS's initial one
        out.mkdir(parents=True, exist_ok=True)
        torch.save(vision, out / "vision.pt")
        checkpoint.save_atomic(checkpoint.make("blip2_qformer", model, ["image_encoder"], iter=0,
                                               converted_from=str(src)), out / "model.pt")
        tok = AutoTokenizer.from_pretrained(str(src))
        tok.save_pretrained(str(out / "tokenizer"))
        section = {"name": "blip2_qformer", **_section(config, out), "embed_dim": config.image_text_hidden_size,
                   "losses": ["itc", "itm"]}
        section["qformer"] |= {"vocab_size": len(tok) - ("[DEC]" in tok.get_vocab()), "bert": str(out / "tokenizer")}
        return Converted(section, {"vision.pt": len(vision), "model.pt": len(model)})

    def write(self, model: nn.Module, spec: Dict[str, Any], out: Path) -> None:
        from transformers import (
            Blip2Config,
            Blip2ForConditionalGeneration,
            Blip2ForImageTextRetrieval,
            InstructBlipConfig,
            InstructBlipForConditionalGeneration,
        )

        if spec["name"] not in ("blip2_qformer", "blip2_generative"):
            raise ConfigError(f"model {spec['name']!r}: --to hf writes blip2_generative (as "
                              f"Blip2ForConditionalGeneration) and blip2_qformer (as Blip2ForImageTextRetrieval)")
        instruct = spec["name"] == "blip2_generative" and bool(getattr(model, "qformer_text_input", False))
        state = ours_to_hf({k: v.float() for k, v in model.state_dict().items()}, instruct)
        qf = model.qformer
        if spec["name"] == "blip2_qformer":
            vision, qformer = _configs(model, text_input=True)
            config = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=qf.num_query_tokens,
                                 image_text_hidden_size=model.vision_proj.out_features)
            return _save(Blip2ForImageTextRetrieval(config), state, model.tokenizer, out)
        llm = model.llm
        tok = llm.tokenizer
        if "<image>" not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        if len(tok) > llm.model.get_input_embeddings().num_embeddings:
            llm.model.resize_token_embeddings(len(tok))
        vision, qformer = _configs(model, text_input=instruct, instruct=instruct)
        config = (InstructBlipConfig if instruct else Blip2Config)(
            vision_config=vision, qformer_config=qformer, text_config=llm.model.config.to_dict(),
            num_query_tokens=qf.num_query_tokens, image_token_index=tok.convert_tokens_to_ids("<image>"))
        state |= {f"language_model.{k}": v for k, v in llm.model.state_dict().items()}
        hf = (InstructBlipForConditionalGeneration if instruct else Blip2ForConditionalGeneration)(config)
        _save(hf, state, tok, out, tied=("lm_head.weight",))
        if instruct:  # where InstructBlipProcessor finds the Q-Former's tokenizer
            model.tokenizer.save_pretrained(str(out / "qformer_tokenizer"))
