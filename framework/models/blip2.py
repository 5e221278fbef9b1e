"""What stage 1 and stage 2 BLIP-2 share: frozen image encoder -> ``ln_vision`` -> Q-Former, and its tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
from torch import nn

from framework.core.checkpoint import summarize_keys
from framework.core.errors import NotABertCheckpoint
from framework.core.logs import logger
from framework.core.schema import Part
from framework.data.builder import DataFile
from framework.models.bert import load_bert
from framework.models.build import building_on_meta
from framework.models.image_encoder import build_image_encoder, example_images
from framework.models.qformer import QFormer, QFormerSizes


@dataclass
class QFormerArgs(QFormerSizes):
    """``model.qformer``: the Q-Former's sizes (:class:`framework.models.qformer.QFormerSizes`) and where its BERT
    comes from.

    bert: a Hugging Face BERT folder (config.json, vocab.txt, weights) giving the tokenizer and, when
    ``init_from_bert``, the initial weights; its sizes must equal the ones here. For the real-size configs
    put ``bert-base-uncased`` (https://huggingface.co/bert-base-uncased) in a folder and point here. A stage-2
    model whose Q-Former reads no text and comes from a checkpoint (a converted Hugging Face model) needs none.

    grad_checkpointing: keep no layer's activations for the backward pass; recompute them there (less memory,
    about a third more compute for the Q-Former; LAVIS has no such switch for it).
    """
    bert: Optional[str] = None
    init_from_bert: bool = True
    grad_checkpointing: bool = False


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (the frozen encoder's tokens may be fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


def load_tokenizer(folder: str, vocab_size: int):
    """The BERT tokenizer of ``folder`` with [DEC] (the ITG start token) added as BOS, id ``vocab_size``."""
    from transformers import BertTokenizerFast

    path = Path(folder).expanduser()
    if not (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        raise NotABertCheckpoint(f"model.qformer.bert: {path} holds no BERT tokenizer (vocab.txt or tokenizer.json)")
    tok = BertTokenizerFast.from_pretrained(str(path), truncation_side="right")
    has_dec = "[DEC]" in tok.get_vocab()  # a BLIP-2 tokenizer saved with it (LAVIS, transformers' Blip2)
    if len(tok) - has_dec != vocab_size:
        raise NotABertCheckpoint(f"model.qformer.bert: the tokenizer in {path} has {len(tok) - has_dec} tokens "
                                 f"(without [DEC]) but qformer.vocab_size is {vocab_size}; set vocab_size: "
                                 f"{len(tok) - has_dec}")
    if has_dec and tok.convert_tokens_to_ids("[DEC]") != vocab_size:
        raise NotABertCheckpoint(f"model.qformer.bert: [DEC] in {path} is not the last token (id {vocab_size})")
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


class Blip2Base(nn.Module):
    """Frozen image encoder, the trainable fp32 ``ln_vision``, and the Q-Former with its tokenizer."""

    def __init__(self, image_encoder: Part("image_encoder"), qformer: QFormerArgs, max_txt_len: int,
                 reads_text: bool = True) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the rest initialises alike whether the encoder is built or cached
            self.image_encoder = build_image_encoder(image_encoder)
        if not self.image_encoder.frozen:
            logger.info("the image encoder %r is trained (freeze: false): BLIP-2 keeps it frozen in stages 1 and 2 "
                        "and trains it when fine-tuning", image_encoder.get("name"))
        width = self.image_encoder.num_features
        self.ln_vision = LayerNormFP32(width)
        q = qformer
        self.qformer = QFormer(width, **q.sizes())
        self.qformer.grad_checkpointing = q.grad_checkpointing
        self.max_txt_len = max_txt_len
        self.num_truncated = 0
        self.tokenizer = None
        self.weight_files = [DataFile(Path(q.bert).expanduser(), "Q-Former BERT folder (tokenizer and weights)")] \
            if q.bert else []
        if building_on_meta():
            return  # --dry-run: architecture only, no files read
        if q.bert is None:
            if reads_text:
                raise NotABertCheckpoint("model.qformer.bert is not set: the Q-Former needs a BERT folder for its "
                                         "tokenizer (and initial weights); e.g. bert-base-uncased in Hugging Face "
                                         "format")
            logger.info("model.qformer.bert is not set: the Q-Former (queries only) starts random; its weights "
                        "must come from a checkpoint")
            return
        self.tokenizer = load_tokenizer(q.bert, q.vocab_size)
        if q.init_from_bert:
            unused = load_bert(self.qformer, q.bert)
            logger.info("Q-Former initialised from %s; BERT weights not used: %s", q.bert,
                        summarize_keys(unused) or "none")

    @property
    def num_layers(self) -> int:
        """Blocks of the image encoder: ``run.optimizer.layer_decay`` decays their lr (LAVIS's lr_layer_decay
        when the ViT is fine-tuned); the Q-Former and heads train at the full lr."""
        return getattr(self.image_encoder, "num_layers", 0)

    def layer_id(self, name: str) -> int:
        """The image encoder's own layer of its parameters (its ``layer_id``); ``num_layers`` + 1: the rest."""
        prefix = "image_encoder."
        if name.startswith(prefix) and hasattr(self.image_encoder, "layer_id"):
            return self.image_encoder.layer_id(name[len(prefix):])
        return self.num_layers + 1

    def example_batch(self, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        """What the BLIP-2 tasks' training batches hold (:class:`framework.models.interfaces.HasExampleBatch`):
        images (or, with the feature cache, the encoder's tokens), captions, prompts, one image id per sample."""
        text = " ".join(["w"] * text_tokens)
        return dict(image=example_images(self.image_encoder, batch_size), text_input=[text] * batch_size,
                    prompt=[""] * batch_size, image_id=torch.arange(batch_size))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens for the Q-Former: frozen encoder, then ``ln_vision`` (fp32)."""
        return self.ln_vision(self.image_encoder(images))

    def tokenize(self, texts: List[str], pad_to_max: bool = False,
                 keep: Literal["start", "end"] = "start") -> Tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask): [CLS] text [SEP], cut to ``max_txt_len`` tokens keeping the text's
        ``start`` (captions) or ``end`` (an instruction: its question is last) (cuts are counted in
        ``num_truncated`` and logged once), padded to the longest text or to ``max_txt_len``."""
        tok = self.tokenizer
        ids = tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > self.max_txt_len]
        if long:
            if not self.num_truncated:
                logger.warning("texts longer than max_txt_len=%d tokens are truncated, e.g. %r (%d tokens); "
                               "the count is kept in model.num_truncated", self.max_txt_len, texts[long[0]][:80],
                               len(ids[long[0]]))
            self.num_truncated += len(long)
            for i in long:
                ids[i] = ids[i][: self.max_txt_len - 1] + [tok.sep_token_id] if keep == "start" else \
                    ids[i][:1] + ids[i][1 - self.max_txt_len:]
        enc = tok.pad({"input_ids": ids}, padding="max_length" if pad_to_max else "longest",
                      max_length=self.max_txt_len, return_tensors="pt")
        device = self.qformer.query_tokens.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)
