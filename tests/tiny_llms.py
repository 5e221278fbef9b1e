"""Tiny OPT and T5 models in Hugging Face format, made in the test: a word-level tokenizer built with
``tokenizers`` and random weights, saved with ``save_pretrained`` and read back through the adapters."""
from __future__ import annotations

from pathlib import Path
from typing import List

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


def fit_after_visual_prefix(model, input_ids, attention_mask, labels, seed: int, steps: int, exact) -> None:
    """Train ``model`` (Adam, one batch of everything) to produce ``labels`` from 4 random 32-wide vectors standing
    where the visual prompt will go, then round every weight to ``exact`` (fp16 / bf16) and back: LAVIS loads the
    LLM in that dtype, an fp32 load then holds the same numbers."""
    import torch

    mask = torch.cat([torch.ones(len(input_ids), 4, dtype=torch.long), attention_mask], 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        embeds = torch.cat([torch.randn(len(input_ids), 4, 32, generator=g), model.get_input_embeddings()(input_ids)],
                           1)
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(exact).float())


def opt_bpe_tokenizer(folder: Path) -> List[str]:
    """OPT's kind of tokenizer in ``folder``: GPT-2's byte-level BPE (trained here on shapes captions and VQA lines),
    every text started with </s>. Returns the training texts, each ended by a newline."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    from tiny_bert import CORPUS

    folder.mkdir(parents=True, exist_ok=True)
    captions = [c for c in CORPUS if c.startswith("a ") and len(c.split()) >= 3]
    texts = [f"{c}\n" for c in captions] + [f"a photo of {c}\n" for c in captions[::3]] + \
        [f"Question: what color is the {c.split()[2]}? Answer: {c.split()[1]}\n" for c in captions[::4]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=320, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe.save_model(str(folder))
    GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="</s>", eos_token="</s>",
                  pad_token="<pad>", unk_token="<unk>", add_bos_token=True).save_pretrained(str(folder))
    # transformers 4.33 (LAVIS's) reads add_bos_token from the config
    config_file = folder / "tokenizer_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"add_bos_token": True}, indent=1))
    return texts


def make_tiny_opt_bpe(folder: Path, seed: int = 0, steps: int = 150, dropout: float = 0.0) -> Path:
    """An OPT as the released ones are: a byte-level BPE tokenizer (GPT-2's, the start token </s> added) and texts
    that end with a newline, which the model has learnt to produce (``steps`` of training on shapes captions and
    VQA lines after a random 4-vector visual prefix), so generation really stops there. Weights are exact fp16
    values, so LAVIS, which loads OPT in fp16, and an fp32 load hold the same numbers. ``dropout``: the saved
    config's hidden-state dropout (trained without)."""
    import torch
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    texts = opt_bpe_tokenizer(folder)
    tok = GPT2Tokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                    eos_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = OPTForCausalLM(cfg)
    enc = tok(texts, padding=True, return_tensors="pt")  # one batch of every text, padded on the right
    labels = torch.cat([torch.full((len(texts), 4), -100), enc["input_ids"].masked_fill(enc["attention_mask"] == 0,
                                                                                       -100)], 1)
    fit_after_visual_prefix(model, enc["input_ids"], enc["attention_mask"], labels, seed, steps, torch.float16)
    model.config.dropout = dropout
    model.save_pretrained(str(folder))
    return folder


def make_tiny_t5_trained(folder: Path, seed: int = 0, steps: int = 150) -> Path:
    """The tiny T5 above, trained (``steps``, after a random 4-vector visual prefix in the encoder) to answer
    "a photo of" with a caption and a colour question with the colour, each ended by </s>. Weights are exact bf16
    values: LAVIS stores FlanT5 in bf16, an fp32 load holds the same numbers."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    make_tiny_t5(folder, seed)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = T5ForConditionalGeneration.from_pretrained(str(folder))
    colors, shapes = ["red", "green", "blue"], ["circle", "square", "triangle"]
    pairs = [("a photo of", f"a {c} {s}") for c in colors for s in shapes]
    pairs += [(f"question : what color is the {s} ? short answer :", c) for c in colors for s in shapes]
    enc = tok([p for p, _ in pairs], padding=True, return_tensors="pt")
    labels = tok([t for _, t in pairs], padding=True, return_tensors="pt")["input_ids"]
    labels = labels.masked_fill(labels == tok.pad_token_id, -100)
    fit_after_visual_prefix(model, enc["input_ids"], enc["attention_mask"], labels, seed, steps, torch.bfloat16)
    model.config.dropout_rate = 0.0  # a frozen LLM trains in training mode under LAVIS: no dropout, no randomness
    model.save_pretrained(str(folder))
    return folder


def make_tiny_hf_blip2(folder: Path, llm: str) -> Path:
    """A transformers ``Blip2ForConditionalGeneration`` folder over a tiny OPT (``opt``, ``opt_released``) or T5,
    random weights perturbed so none is zero or one. ``opt_released``: OPT configured as transformers' released
    blip2-opt checkpoints are: byte-level BPE, its text ending at a newline (``text_config.eos_token_id`` = the
    newline's id), made likely so that generation does stop there."""
    import torch
    from transformers import (AutoTokenizer, Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig,
                              Blip2VisionConfig, OPTConfig, T5Config)

    released = llm == "opt_released"
    llm = "opt" if released else llm
    folder.mkdir(parents=True)
    if released:  # as the released blip2-opt: OPT's byte-level BPE, text ending at a newline
        opt_bpe_tokenizer(folder)
    else:
        _tokenizer(folder, bos=llm == "opt")
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # where the queries go in the input
    tok.save_pretrained(str(folder))
    vocab = len(tok)
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    vision = Blip2VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 encoder_hidden_size=48, vocab_size=100)
    if llm == "opt":
        text = OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                         max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=newline if released else tok.eos_token_id)
    else:
        text = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="gated-gelu",
                        tie_word_embeddings=False)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # no zero biases or unit norms: every weight must land in the right place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if released:  # the tied output row of the newline, larger: some texts end before max_new_tokens
            model.language_model.get_input_embeddings().weight[newline] *= 10
    model.save_pretrained(str(folder))
    return folder


def llama_sp_tokenizer(folder: Path, pad: bool = True) -> List[str]:
    """Vicuna's kind of tokenizer in ``folder``: a SentencePiece BPE model with byte fallback (LLaMA's ids: <unk> 0,
    <s> 1, </s> 2), trained here on shapes texts, and the files lmsys/vicuna-7b-v1.1 ships (``tokenizer.model``,
    ``tokenizer_config.json`` for the slow ``LlamaTokenizer``, ``special_tokens_map.json``), which transformers 4.33
    (LAVIS's, slow) and 5.x (fast, converted) both read. ``pad``: with "[PAD]" after the vocabulary (id 400), as the
    InstructBLIP folders transformers converted hold; without, as Vicuna's own (the adapter adds it).
    SentencePiece is LLaMA's tokenizer format, so it is trained with ``sentencepiece`` (one thread: its BPE
    trainer is then deterministic). Returns the training texts."""
    import io
    import json

    import sentencepiece as spm

    from tiny_bert import CORPUS

    folder.mkdir(parents=True, exist_ok=True)
    captions = [c for c in CORPUS if c.startswith("a ") and len(c.split()) >= 3]
    texts = captions + [f"What color is the {c.split()[2]}? {c.split()[1]}" for c in captions[::4]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"} | ({"pad_token": "[PAD]"} if pad else {})
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
              "clean_up_tokenization_spaces": False, "model_max_length": 2048, "sp_model_kwargs": {}, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    if pad:
        (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": 400}))
    return texts


def make_tiny_vicuna(folder: Path, seed: int = 0, steps: int = 120, pad: bool = True) -> Path:
    """A Vicuna as InstructBLIP's: LLaMA architecture, the tokenizer of :func:`llama_sp_tokenizer`, trained
    (``steps``, after a random 4-vector visual prefix) on shapes captions and colour questions each started by
    "</s>" (LAVIS's bos) and ended by "</s>", so generation stops. Weights are exact fp16 values: LAVIS loads
    Vicuna in fp16, an fp32 load then holds the same numbers. No dropout (LLaMA has none)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    texts = llama_sp_tokenizer(folder, pad=pad)
    tok = AutoTokenizer.from_pretrained(str(folder), bos_token="</s>", eos_token="</s>", unk_token="</s>")
    if not pad:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=401 if pad else 400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, rms_norm_eps=1e-6,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    if not pad:
        model.resize_token_embeddings(len(tok), mean_resizing=False)  # trained with the pad row, saved without
    tok.padding_side = "right"
    enc = tok([t + "</s>" for t in texts], padding=True, return_tensors="pt")
    labels = torch.cat([torch.full((len(texts), 4), -100),
                        enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)], 1)
    fit_after_visual_prefix(model, enc["input_ids"], enc["attention_mask"], labels, seed, steps, torch.float16)
    if not pad:
        model.resize_token_embeddings(400, mean_resizing=False)
    model.save_pretrained(str(folder))
    return folder


def make_tiny_hf_instructblip(folder: Path, llm: str) -> Path:
    """A transformers ``InstructBlipForConditionalGeneration`` folder over a tiny Vicuna (``vicuna``: the
    SentencePiece tokenizer, its tokens as transformers' conversion sets LAVIS's: "</s>" start, end and unknown,
    "[PAD]") or T5 (``t5``), random weights perturbed so none is zero or one; the Q-Former's tokenizer (the tiny
    BERT's, "[DEC]" added, as the conversion adds it) in ``qformer_tokenizer/``, where the processor keeps it."""
    import torch
    from transformers import (AutoTokenizer, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipQFormerConfig, InstructBlipVisionConfig, LlamaConfig, LlamaForCausalLM,
                              T5Config, T5ForConditionalGeneration)

    from tiny_bert import make_tiny_bert

    folder.mkdir(parents=True)
    if llm == "vicuna":
        llama_sp_tokenizer(folder)
        tok = AutoTokenizer.from_pretrained(str(folder), bos_token="</s>", eos_token="</s>", unk_token="</s>")
    else:
        _tokenizer(folder, bos=False)
        tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # where the queries go in the input
    tok.save_pretrained(str(folder))
    qtok = AutoTokenizer.from_pretrained(str(make_tiny_bert(folder.parent / f"{folder.name}_bert")))
    qtok.add_special_tokens({"bos_token": "[DEC]"})
    qtok.save_pretrained(str(folder / "qformer_tokenizer"))
    vision = InstructBlipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=32, patch_size=8)
    qformer = InstructBlipQFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, encoder_hidden_size=48, vocab_size=len(qtok),
                                        max_position_embeddings=64)
    if llm == "vicuna":
        text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                           rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           tie_word_embeddings=False)  # the tiny Vicuna's sizes: its trained weights go in
    else:  # the trained tiny T5's own configuration: its weights go in
        lm_folder = make_tiny_t5_trained(folder.parent / f"{folder.name}_t5")
        text = T5Config.from_pretrained(str(lm_folder))
        text.vocab_size = len(tok)
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                text_config=text.to_dict(), num_query_tokens=4,
                                image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config)
    with torch.no_grad():  # no zero biases or unit norms: every weight must land in the right place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    # the trained tiny LLM, so that generation says words (a random one ends at once, or pads)
    if llm == "vicuna":
        trained = LlamaForCausalLM.from_pretrained(str(make_tiny_vicuna(folder.parent / f"{folder.name}_vicuna")))
    else:
        trained = T5ForConditionalGeneration.from_pretrained(str(lm_folder))
    trained.resize_token_embeddings(len(tok), mean_resizing=False)  # the <image> row
    model.language_model.load_state_dict(trained.state_dict())
    model.save_pretrained(str(folder))
    return folder
