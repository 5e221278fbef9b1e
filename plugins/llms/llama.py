"""``llama``: LLaMA-family decoder-only LLMs (Vicuna v1.1, LLaMA-2, Mistral) through transformers'
``AutoModelForCausalLM``, with InstructBLIP's tokenizer contract as LAVIS's ``Blip2VicunaInstruct`` sets it."""
from __future__ import annotations

from typing import Dict, List, Optional

from framework.core.registry import LLMS
from framework.models.llm import DecoderOnlyAdapter, LLMPrecision, LoraArgs

# LAVIS's Blip2VicunaInstruct: a pad token of its own (so padding never hides the end of text), and "</s>" as
# start, end and unknown token (every text starts with </s>, not LLaMA's <s>)
LAVIS_VICUNA_TOKENS = {"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"}


def _llama(hidden: int, layers: int, heads: int, intermediate: int, kv_heads: Optional[int] = None,
           model_type: str = "llama", max_positions: int = 2048) -> dict:
    """config.json fields of the released checkpoints (LLaMA's 32000-token vocabulary)."""
    return {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads or heads,
            "intermediate_size": intermediate, "vocab_size": 32000, "max_position_embeddings": max_positions}


@LLMS.register("llama")
class Llama(DecoderOnlyAdapter):
    """Args: see :class:`framework.models.llm.DecoderOnlyAdapter`; ``path`` must hold a LLaMA-architecture model.
    The defaults are LAVIS's ``Blip2VicunaInstruct``'s: ``special_tokens`` (a "[PAD]" added, rows appended to the
    embeddings; "</s>" starts, ends and stands for unknown text), the instruction and the output tokenised apart
    (``joint_tokens: false``), the instruction cut from its start to ``max_txt_len`` 128 tokens, the output with
    its end of text cut from its end to ``max_output_txt_len`` 256, fp16.

    Generation as LAVIS's: ``min_length`` counts the start token transformers puts before the generated ones
    (LAVIS gives the prompt as embeddings; its ``max_length`` L is ``max_new_tokens`` L - 1 here), and the text is
    decoded as LLaMA's tokenizer does (no clean-up of spaces), without ``<unk>`` (LAVIS maps id 0,
    LLaMA's ``<unk>``, to the end of text before decoding)."""

    model_type = ("llama", "mistral")
    LORA_TARGETS = ("q_proj", "v_proj")
    archs = {"vicuna-7b": _llama(4096, 32, 32, 11008), "vicuna-13b": _llama(5120, 40, 40, 13824),
             "llama-2-7b": _llama(4096, 32, 32, 11008, max_positions=4096),
             "llama-2-13b": _llama(5120, 40, 40, 13824, max_positions=4096),
             "mistral-7b": _llama(4096, 32, 32, 14336, kv_heads=8, model_type="mistral", max_positions=32768)}
    CLEAN_UP_SPACES = False

    def __init__(self, path: str, arch: Optional[str] = None, precision: LLMPrecision = "fp16", freeze: bool = True,
                 frozen_dropout: bool = True, max_txt_len: int = 128, end_of_text: Optional[str] = None,
                 joint_tokens: bool = False, max_output_txt_len: Optional[int] = 256,
                 special_tokens: Dict[str, str] = LAVIS_VICUNA_TOKENS, lora: Optional[LoraArgs] = None) -> None:
        super().__init__(path, arch, precision, freeze, frozen_dropout, max_txt_len, end_of_text, joint_tokens,
                         max_output_txt_len, special_tokens, lora)

    def new_tokens_for(self, min_length: int, prompts: List[str]) -> int:
        """LAVIS's ``Blip2VicunaInstruct`` gives the prompt as embeddings only, so transformers (4.33) starts the
        sequence with the start token, which ``min_length`` (and ``max_length``) count."""
        return max(0, min_length - 1)

    def hidden_ids(self) -> List[int]:
        """LLaMA's ``<unk>`` (id 0): LAVIS turns it into the end of text, so it never shows in an output."""
        return [0] if self.tokenizer is not None and self.tokenizer.convert_ids_to_tokens(0) == "<unk>" else []
