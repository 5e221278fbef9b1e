"""``hf_causal_lm``: any other decoder-only Hugging Face model (Llama, Qwen, GPT-2, ...), beyond the paper."""
from __future__ import annotations

from framework.models.llm import DecoderOnlyAdapter
from framework.registry import LLMS


@LLMS.register("hf_causal_lm")
class HFCausalLM(DecoderOnlyAdapter):
    """Args: see :class:`framework.models.llm.LLMAdapter`; ``path`` may hold any causal LM."""
