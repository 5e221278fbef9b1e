"""Tiny OPT and T5 models in Hugging Face format, made in the test: a word-level tokenizer built with
``tokenizers`` and random weights, saved with ``save_pretrained`` and read back through the adapters."""
from __future__ import annotations

from pathlib import Path

WORDS = ["<pad>", "</s>", "<unk>", "a", "red", "green", "blue", "circle", "square", "triangle", "photo", "of",
         "question", ":", "answer", "short", "what", "color", "is", "the", "?", "one", "two", "shapes", "and", "\n"]


def _tokenizer(folder: Path, bos: bool):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    # words and punctuation as Whitespace() splits them, and a newline as a token of its own (OPT's end of text)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True)
    # OPT's tokenizer starts a text with </s>; T5's ends it with </s>
    template = "</s> $A" if bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>" if bos else None, eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(str(folder))


def make_tiny_opt(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer(folder, bos=True)
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                    eos_token_id=1)
    OPTForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def make_tiny_t5(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer(folder, bos=False)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="gated-gelu")
    T5ForConditionalGeneration(cfg).save_pretrained(str(folder))
    return folder


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A Llama-architecture model for ``hf_causal_lm`` (any decoder-only family beyond OPT)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer(folder, bos=True)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                      bos_token_id=1, eos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder
