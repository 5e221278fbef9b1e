"""``flant5``: T5 / FlanT5 (any size), encoder-decoder, through transformers' ``T5ForConditionalGeneration``.
The paper stores FlanT5 in bf16 (fp16 overflows in its feed-forward)."""
from __future__ import annotations

from framework.models.image_encoder import Precision
from framework.models.llm import EncoderDecoderAdapter
from framework.registry import LLMS


@LLMS.register("flant5")
class FlanT5(EncoderDecoderAdapter):
    """Args: see :class:`framework.models.llm.LLMAdapter`; ``precision`` defaults to bf16."""

    model_type = ("t5",)

    def __init__(self, path: str, precision: Precision = "bf16", freeze: bool = True, max_txt_len: int = 32) -> None:
        super().__init__(path, precision, freeze, max_txt_len)
