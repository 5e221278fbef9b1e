"""``opt``: Meta's OPT (any size), decoder-only, through transformers' ``OPTForCausalLM``."""
from __future__ import annotations

from framework.models.llm import DecoderOnlyAdapter
from framework.registry import LLMS


@LLMS.register("opt")
class OPT(DecoderOnlyAdapter):
    """Args: see :class:`framework.models.llm.LLMAdapter`; ``path`` must hold an OPT model."""

    model_type = ("opt",)
