"""``lavis``: Salesforce LAVIS's BLIP-2 checkpoints (``blip2``, ``blip2_opt``, ``blip2_t5``) and InstructBLIP's
(``blip2_vicuna_instruct``, ``blip2_t5_instruct``), read and written.

LAVIS keeps the weights under ``model`` in a ``.pth``: ``visual_encoder.`` (EVA's names, the frozen ViT),
``ln_vision.``, ``Qformer.bert.`` / ``Qformer.cls.`` (a ``BertLMHeadModel``: exactly the names of
:func:`framework.models.bert.qformer_keys`), ``query_tokens``, ``vision_proj``, ``text_proj``, ``itm_head``,
``temp``, and ``opt_proj`` / ``t5_proj`` / ``llm_proj`` (InstructBLIP's Vicuna). It holds no LLM weights: the LLM
folder is named in the config. InstructBLIP's Q-Former keeps its text path (the instruction goes in beside the
queries): a generative checkpoint with the Q-Former's word embeddings reads as ``qformer_text_input: true``.

Reading writes ``model.pt`` (our checkpoint), ``vision.pt`` (the encoder in EVA's names, when the file holds it)
and the ``model:`` section. What the weights do not say is LAVIS's fixed architecture: EVA ViT-g with 16 heads,
the Q-Former from ``bert-base-uncased`` (12 heads); ``--options`` overrides either for a model built otherwise.
Writing gives the ``.pth`` LAVIS's ``load_checkpoint`` reads (``{"model": state_dict}``), the image encoder in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from framework.core import checkpoint
from framework.core.errors import ConfigError
from framework.core.registry import FORMATS
from framework.interop.formats import Converted, Format, split_prefix
from framework.models.bert import qformer_keys
from framework.models.image_encoder import read_state_dict
from framework.models.keys import KeyTable, layer_indices, linear
from framework.models.qformer import text_path

# LAVIS's state_dict holds these beside the weights we keep; on writing they are filled in as LAVIS has them
DERIVED = {"Qformer.bert.embeddings.position_ids": "a buffer (positions 0..511)",
           "Qformer.cls.predictions.decoder.weight": "tied to the word embeddings",
           "Qformer.cls.predictions.decoder.bias": "the same tensor as cls.predictions.bias"}
LLM_PREFIXES = {prefix: "the frozen LLM (our config names its folder)"
                for prefix in ("opt_model.", "t5_model.", "llm_model.")}
PROJECTIONS = {"opt": "opt_proj", "flant5": "t5_proj", "llama": "llm_proj"}  # our LLM adapter -> LAVIS's projection
# LAVIS's InstructBLIP models' defaults: the instruction's tokens (Q-Former and LLM), the output's
INSTRUCT_MAX_TXT_LEN, INSTRUCT_MAX_OUTPUT_TXT_LEN = 128, 256
EVA_HEADS, BERT_BASE_HEADS = 16, 12  # LAVIS's create_eva_vit_g and bert-base-uncased: not in the weights
# LAVIS's frozen encoders by their token width: (our encoder, the file LAVIS loads it from)
ENCODERS_BY_WIDTH = {1408: ("eva_vit_g", "EVA-CLIP's eva_vit_g.pth"), 1024: ("clip_vit_l", "LAVIS's clip_vit_L.pth")}


def key_table(num_layers: int, projection: Optional[str]) -> KeyTable:
    """Every LAVIS BLIP-2 key we keep (the image encoder aside), ours beside it. ``projection``: ``opt_proj`` or
    ``t5_proj`` when writing a stage-2 model; None when reading (whichever the file holds)."""
    table = qformer_keys(num_layers).within("Qformer.", "qformer.")
    table += KeyTable.of([("query_tokens", "qformer.query_tokens"), ("temp", "temp")])
    for name in ("ln_vision", "vision_proj", "text_proj", "itm_head"):
        table += linear(name, name)
    for proj in [projection] if projection else PROJECTIONS.values():
        table += linear(proj, "llm_proj")
    return table


def lavis_to_ours(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor],
                                                            Dict[str, str]]:
    """A LAVIS state dict as (our model weights, the image encoder in EVA's names, {left-out key: why}). A key
    with no place raises, naming it."""
    vision = split_prefix(state, "visual_encoder.")
    dropped = {k: DERIVED[k] for k in state if k in DERIVED}
    dropped |= {k: why for k in state for p, why in LLM_PREFIXES.items() if k.startswith(p)}
    rest = {k: v for k, v in state.items() if k not in dropped and not k.startswith("visual_encoder.")}
    layers = layer_indices(rest, "Qformer.bert.encoder.layer.")
    model, unknown = key_table(len(layers), None).to_ours(rest, "the LAVIS checkpoint", ConfigError)
    if unknown:
        raise ConfigError(f"{len(unknown)} keys of the LAVIS checkpoint have no place in our model: "
                          f"{', '.join(unknown[:12])}")
    return model, vision, dropped


def ours_to_lavis(weights: Dict[str, torch.Tensor], llm: Optional[str]) -> Dict[str, torch.Tensor]:
    """Our model's state dict in LAVIS's names (``llm``: the adapter name of a stage-2 model), with the derived
    keys LAVIS's own ``state_dict()`` has."""
    vision = {f"visual_encoder.{k}": v for k, v in split_prefix(weights, "image_encoder.vit.").items()}
    rest = {k: v for k, v in weights.items() if not k.startswith(("image_encoder.", "llm."))}
    projection = PROJECTIONS.get(llm) if llm else None
    if llm and projection is None:
        raise ConfigError(f"--to lavis: LAVIS has BLIP-2 models for OPT, FlanT5 and Vicuna "
                          f"({', '.join(PROJECTIONS)}), not for the LLM adapter {llm!r}")
    layers = layer_indices(rest, "qformer.layers.")
    state, unused = key_table(len(layers), projection).to_theirs(rest, "our model", ConfigError)
    if unused:
        raise ConfigError(f"--to lavis: {len(unused)} of our keys have no place in a LAVIS BLIP-2: {unused[:12]}")
    if "Qformer.bert.embeddings.position_embeddings.weight" in state:
        n = state["Qformer.bert.embeddings.position_embeddings.weight"].shape[0]
        state["Qformer.bert.embeddings.position_ids"] = torch.arange(n)[None]
    if "Qformer.cls.predictions.bias" in state:
        state["Qformer.cls.predictions.decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"]
        state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"]
    return vision | state


def _vision_section(vision: Dict[str, torch.Tensor], out: Path) -> Dict[str, Any]:
    """The image encoder the weights are for: EVA ViT-g by LAVIS's names, its sizes read off the tensors."""
    if "blocks.0.attn.q_bias" not in vision:
        raise ConfigError("the LAVIS checkpoint's visual_encoder is not an EVA ViT (no blocks.0.attn.q_bias): "
                          "convert it with the encoder's own checkpoint instead")
    pos, patch = vision["pos_embed"], vision["patch_embed.proj.weight"]
    grid = round((pos.shape[1] - 1) ** 0.5)
    return {"name": "eva_vit_g", "image_size": grid * patch.shape[-1], "patch_size": patch.shape[-1],
            "width": pos.shape[-1], "depth": len(layer_indices(vision, "blocks.")), "heads": EVA_HEADS,
            "mlp_dim": vision["blocks.0.mlp.fc1.weight"].shape[0], "freeze": True, "precision": "fp16",
            "checkpoint": str(out / "vision.pt")}


def _qformer_section(model: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    queries = model["qformer.query_tokens"]
    layers = layer_indices(model, "qformer.layers.")
    cross = [i for i in layers if f"qformer.layers.{i}.cross.q.weight" in model]
    section = {"hidden_size": queries.shape[-1], "num_layers": len(layers), "num_heads": BERT_BASE_HEADS,
               "intermediate_size": model["qformer.layers.0.ffn_query.fc1.weight"].shape[0],
               "num_query_tokens": queries.shape[1], "cross_attention_freq": cross[1] if len(cross) > 1 else len(layers),
               "bert": None, "init_from_bert": False}
    if "qformer.word_embeddings.weight" in model:  # LAVIS's vocabulary includes [DEC]; ours counts it apart
        section["vocab_size"] = model["qformer.word_embeddings.weight"].shape[0] - 1
        section["max_position_embeddings"] = model["qformer.position_embeddings.weight"].shape[0]
    return section


@FORMATS.register("lavis")
class Lavis(Format):
    reads = "a LAVIS BLIP-2 checkpoint (.pth)"
    writes = "model.pth, a LAVIS checkpoint ({'model': state_dict})"

    def read(self, src: Path, out: Path) -> Converted:
        if not src.is_file():
            raise ConfigError(f"--src {src}: no such file (a LAVIS .pth checkpoint)")
        state = read_state_dict(src)
        model, vision, dropped = lavis_to_ours(state)
        generative = "llm_proj.weight" in model
        frozen = ["image_encoder", "llm"] if generative else ["image_encoder"]
        name = "blip2_generative" if generative else "blip2_qformer"
        reads_text = not generative or "qformer.word_embeddings.weight" in model  # stage 1, or InstructBLIP
        # what LAVIS's stage-2 model deleted: a model that has it (InstructBLIP from BLIP-2 weights) keeps its own
        absent = [f"qformer.{p}" for p in text_path(len(layer_indices(model, "qformer.layers.")), reads_text)] \
            if generative else []
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic(checkpoint.make(name, model, frozen, iter=0, converted_from=str(src), absent=absent),
                               out / "model.pt")
        needs = [  # a BLIP-2 stage-2 Q-Former reads no text: it needs no tokenizer
            "model.qformer.bert: a bert-base-uncased folder (the Q-Former's tokenizer; LAVIS's files hold none)"
        ] if reads_text else []
        section: Dict[str, Any] = {"name": name, "qformer": _qformer_section(model)}
        if vision:
            torch.save(vision, out / "vision.pt")
            section["image_encoder"] = _vision_section(vision, out)
        else:  # frozen, so not saved: which of LAVIS's two encoders, the width of the tokens ln_vision reads says
            width = model["ln_vision.weight"].shape[0]
            encoder, file = ENCODERS_BY_WIDTH.get(width, ("eva_vit_g", None))
            section["image_encoder"] = {"name": encoder, "freeze": True, "precision": "fp16", "checkpoint": None}
            needs.append(f"model.image_encoder.checkpoint: {file} (this file holds no image encoder)" if file else
                         f"model.image_encoder: the encoder this Q-Former reads ({width}-wide tokens, neither LAVIS's "
                         f"EVA ViT-g nor its CLIP ViT-L) and its checkpoint (this file holds no image encoder)")
        if generative:
            llm = next(ours for ours, theirs in PROJECTIONS.items() if f"{theirs}.weight" in state)
            section["llm"] = {"name": llm, "path": None, "precision": "bf16" if llm == "flant5" else "fp16"}
            needs.append("model.llm.path: the LLM's Hugging Face folder (LAVIS's files hold no LLM)")
            if reads_text:  # InstructBLIP: the instruction through the Q-Former and, cut keeping its end, the LLM
                section |= {"qformer_text_input": True, "max_txt_len": INSTRUCT_MAX_TXT_LEN}
                if llm == "flant5":  # the llama adapter's defaults are InstructBLIP's already
                    section["llm"] |= {"max_txt_len": INSTRUCT_MAX_TXT_LEN, "prompt_keeps": "end",
                                       "max_output_txt_len": INSTRUCT_MAX_OUTPUT_TXT_LEN}
        else:
            section |= {"embed_dim": model["vision_proj.weight"].shape[0]}
        section["checkpoint"] = str(out / "model.pt")
        return Converted(section, {"model.pt": len(model), "vision.pt": len(vision)}, dropped, needs)

    def write(self, model: nn.Module, spec: Dict[str, Any], out: Path) -> None:
        llm = spec.get("llm", {}).get("name") if isinstance(spec.get("llm"), dict) else None
        state = ours_to_lavis({k: v.float() for k, v in model.state_dict().items()}, llm)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": state}, out / "model.pth")
        print(f"wrote {out / 'model.pth'}: {len(state)} tensors in LAVIS's names")

