"""A tiny BERT in Hugging Face format, made in the test: a WordPiece vocabulary trained on the fly with
``tokenizers`` and a randomly initialised ``BertModel``, saved with ``save_pretrained``."""
from __future__ import annotations

from pathlib import Path

CORPUS = [f"a {c} {s} {w}" for c in ("red", "green", "blue", "yellow", "purple", "orange")
          for s in ("circle", "square", "triangle") for w in ("on the left", "in the middle", "on the right",
                                                             "to the left of", "from left to right", "picture of")]
CORPUS += ["one shape", "two shapes", "three shapes", "a single", "what shape is the object", "how many are there",
           "what color is the", "is the", "yes", "no", "1", "2", "3", "0"]


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64,
                   seed: int = 0) -> Path:
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=120, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder
