"""A tiny BERT in Hugging Face format, made in the test: a WordPiece tokenizer built with ``tokenizers`` from
the corpus's words and characters, and a randomly initialised ``BertModel``, saved with ``save_pretrained``.

The vocabulary is built, not trained: ``tokenizers``' WordPiece trainer picks a different vocabulary in every
process (ties broken by hash order), which made runs on it differ from one pytest run to the next."""
from __future__ import annotations

import json
from pathlib import Path

CORPUS = [f"a {c} {s} {w}" for c in ("red", "green", "blue", "yellow", "purple", "orange")
          for s in ("circle", "square", "triangle") for w in ("on the left", "in the middle", "on the right",
                                                             "to the left of", "from left to right", "picture of")]
CORPUS += ["one shape", "two shapes", "three shapes", "a single", "what shape is the object", "how many are there",
           "what color is the", "is the", "and", "yes", "no", "1", "2", "3", "0"]
PUNCTUATION = list(",.:;?!-'()")


def vocab_size(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64,
                   seed: int = 0) -> Path:
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for line in CORPUS for w in line.lower().split()})
    chars = sorted({c for w in words for c in w} | set(PUNCTUATION))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + \
        [w for w in words if len(w) > 1]
    wp = BertWordPieceTokenizer(vocab={t: i for i, t in enumerate(tokens)}, lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder
