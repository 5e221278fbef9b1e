"""``flant5``: T5 / FlanT5 (any size), encoder-decoder, through transformers' ``T5ForConditionalGeneration``.
The paper stores FlanT5 in bf16 (fp16 overflows in its feed-forward)."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from framework.core.registry import LLMS
from framework.models.llm import EncoderDecoderAdapter, LLMPrecision, LoraArgs


def _flant5(d_model: int, d_ff: int, layers: int, heads: int) -> dict:
    """config.json fields of the released FlanT5 checkpoints (google/flan-t5-*): T5 v1.1, gated GELU, an output
    layer of its own (not tied to the embeddings)."""
    return {"model_type": "t5", "d_model": d_model, "d_ff": d_ff, "d_kv": 64, "num_layers": layers,
            "num_decoder_layers": layers, "num_heads": heads, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}


@LLMS.register("flant5")
class FlanT5(EncoderDecoderAdapter):
    """Args: see :class:`framework.models.llm.EncoderDecoderAdapter`; ``precision`` defaults to bf16.

    activation: the feed-forward activation, in place of the checkpoint's (LAVIS's Blip2T5 sets ``gelu``, the
        exact one, where FlanT5's config says ``gelu_new``, the tanh approximation: the paper's FlanT5 models ran
        with gelu). null: the checkpoint's (transformers' released blip2-flan-t5 run with it).
    """

    model_type = ("t5",)
    LORA_TARGETS = ("q", "v")  # T5 names its attention projections q, k, v, o (peft #376)
    archs = {"flan-t5-base": _flant5(768, 2048, 12, 12), "flan-t5-large": _flant5(1024, 2816, 24, 16),
             "flan-t5-xl": _flant5(2048, 5120, 24, 32), "flan-t5-xxl": _flant5(4096, 10240, 24, 64)}

    def __init__(self, path: str, arch: Optional[str] = None, precision: LLMPrecision = "bf16", freeze: bool = True,
                 frozen_dropout: bool = True, max_txt_len: int = 32, max_output_txt_len: Optional[int] = None,
                 prompt_keeps: Literal["start", "end"] = "start", activation: Optional[str] = "gelu",
                 lora: Optional[LoraArgs] = None) -> None:
        self.activation = activation  # read by load() inside the base class's __init__
        super().__init__(path, arch, precision, freeze, frozen_dropout, max_txt_len, max_output_txt_len, prompt_keeps,
                         lora=lora)

    def load(self, path: str, dtype: torch.dtype) -> nn.Module:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        if self.activation is not None:
            config.dense_act_fn = self.activation
        return self.auto_class().from_pretrained(path, config=config, dtype=dtype, **self.quantisation())
