"""``opt``: Meta's OPT (any size), decoder-only, through transformers' ``OPTForCausalLM``."""
from __future__ import annotations

from framework.core.registry import LLMS
from framework.models.llm import DecoderOnlyAdapter


def _opt(hidden: int, layers: int, heads: int) -> dict:
    """config.json fields of the released OPT checkpoints (facebook/opt-*)."""
    return {"model_type": "opt", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "ffn_dim": 4 * hidden, "word_embed_proj_dim": hidden, "vocab_size": 50272, "max_position_embeddings": 2048}


@LLMS.register("opt")
class OPT(DecoderOnlyAdapter):
    """Args: see :class:`framework.models.llm.LLMAdapter`; ``path`` must hold an OPT model."""

    model_type = ("opt",)
    LORA_TARGETS = ("q_proj", "v_proj")
    END_OF_TEXT = "\n"  # LAVIS's Blip2OPT ends targets and generation with it; so do the released blip2-opt
    archs = {"opt-1.3b": _opt(2048, 24, 32), "opt-2.7b": _opt(2560, 32, 32), "opt-6.7b": _opt(4096, 32, 32),
             "opt-13b": _opt(5120, 40, 40)}
