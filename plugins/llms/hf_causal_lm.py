"""``hf_causal_lm``: any other decoder-only Hugging Face model (Llama, Qwen, GPT-2, ...), beyond the paper."""
from __future__ import annotations

from typing import Tuple

from framework.core.registry import LLMS
from framework.models.llm import DecoderOnlyAdapter


@LLMS.register("hf_causal_lm")
class HFCausalLM(DecoderOnlyAdapter):
    """Args: see :class:`framework.models.llm.LLMAdapter`; ``path`` may hold any model transformers builds with
    ``AutoModelForCausalLM``."""

    def supported_model_types(self) -> Tuple[str, ...]:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        )

        return tuple(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
