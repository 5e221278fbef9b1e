"""Build the demo's frozen LLM: a tiny OPT (or T5) model trained briefly on the shapes text.

    python -m run_scripts.tiny_llm --cfg projects/blip2/demo/stage2_shapes.yaml

It reads the shapes set the config trains on (its training split only), builds a word-level tokenizer over
that text with ``tokenizers``, trains ``OPTForCausalLM`` (``T5ForConditionalGeneration`` when the config's
LLM adapter is ``flant5``) from scratch on two kinds of text, each after a description of the image (one
of its captions): a caption ("<description> a photo of <caption>") and a question-answer pair ("<description>
question: <q> answer: <a>"), and writes model and tokenizer with ``save_pretrained`` to ``model.llm.path``,
where the ``opt`` adapter loads them like any Hugging Face checkpoint. The LLM thus learns to read captions and
answers off a description in its context; stage 2 teaches the Q-Former to put that description into the
visual prompt (it only ever trains on captions), and zero-shot VQA is the LLM reading its answer off the visual
prompt instead. An existing folder is kept (``--force`` rebuilds it).

``--reading`` evaluates a built LLM instead: its VQA accuracy on the validation questions when each follows a
true caption of the image (the ceiling a visual prompt can reach through this LLM) and when it follows nothing
(the question alone), overall and per answer type, printed and written to ``reading.json`` in its folder.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from framework.engine.experiment import load_experiment
from framework.engine.experiment_data import builders

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2; </s> starts (as OPT's tokenizer does) and ends a text


Example = Tuple[str, str, str]  # (description, prompt, target)


def shapes_texts(root: Path, seed: int) -> List[Example]:
    """(description, prompt, target) triples from the generated set's training annotations."""
    ann = root / "annotations"
    caps: Dict[int, List[str]] = {}
    for a in json.loads((ann / "captions_train.json").read_text())["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    questions = json.loads((ann / "vqa_questions_train.json").read_text())["questions"]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads((ann / "vqa_annotations_train.json").read_text())["annotations"]}
    rng = random.Random(seed)
    examples = [(rng.choice(cs), "a photo of", c) for cs in caps.values() for c in cs]
    examples += [(rng.choice(caps[q["image_id"]]), f"question: {q['question']} answer:", answers[q["question_id"]])
                 for q in questions]
    return examples


def word_tokenizer(texts: List[str], decoder_only: bool):
    """Lower-cased words and punctuation; the vocabulary in a fixed order (count, then word). Texts start with
    </s> as OPT's tokenizer does (decoder-only), or end with it as T5's does (encoder-decoder)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    counts = Counter(w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(t.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    tok.model = models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>")
    template = "</s> $A" if decoder_only else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>" if decoder_only else None, eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def encode(tokenizer, examples: List[Example], decoder_only: bool) -> List[Tuple[List[int], List[int]]]:
    """(input ids, target ids) in stage 2's layout, the description standing where the visual prompt will:
    decoder-only [</s> description] [</s> prompt target </s>], all of it the target (plain language modelling);
    encoder-decoder [description </s>] [prompt </s>] into the encoder, [target </s>] from the decoder."""
    contexts = tokenizer([c for c, _, _ in examples])["input_ids"]
    prompts = tokenizer([p for _, p, _ in examples])["input_ids"]
    targets = tokenizer([t for _, _, t in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if decoder_only:
        return [(c + p + t + [eos],) * 2 for c, p, t in zip(contexts, prompts, targets)]
    return [(c + p, t + [eos]) for c, p, t in zip(contexts, prompts, targets)]


def build_llm(decoder_only: bool, vocab: int, width: int, layers: int):
    from transformers import (
        OPTConfig,
        OPTForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    if decoder_only:
        return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                                        num_attention_heads=width // 32, ffn_dim=4 * width, max_position_embeddings=128,
                                        word_embed_proj_dim=width, dropout=0.0, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=1))
    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=width, d_kv=32, d_ff=4 * width,
                                               num_layers=layers, num_heads=width // 32, feed_forward_proj="gated-gelu",
                                               tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))


def _pad(rows: List[List[int]], value: int) -> torch.Tensor:
    longest = max(map(len, rows))
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows])


def train(examples: List[Example], tokenizer, out: Path, steps: int, batch_size: int, seed: int, width: int,
          layers: int, decoder_only: bool) -> Dict[str, float]:
    torch.manual_seed(seed)
    data = encode(tokenizer, examples, decoder_only)
    model = build_llm(decoder_only, len(tokenizer), width, layers)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    losses = []
    for _ in tqdm(range(steps), desc="tiny LLM", unit="step"):
        rows = [data[rng.randrange(len(data))] for _ in range(batch_size)]
        inputs = _pad([r[0] for r in rows], 0)
        mask = (inputs != 0).long()
        labels = _pad([r[1] for r in rows], -100)
        if decoder_only:
            labels = inputs.masked_fill(mask == 0, -100)
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    record = {"texts": len(examples), "vocab": len(tokenizer),
              "parameters": sum(p.numel() for p in model.parameters()), "steps": steps, "first_loss": losses[0],
              "final_loss": sum(losses[-20:]) / 20}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


@torch.no_grad()
def reading(folder: Path, root: Path, decoder_only: bool, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Validation VQA accuracy (overall and per answer type) of the LLM in ``folder`` answering each question
    after a true caption of its image, as it was trained to (what a perfect visual prompt would tell it: the
    ceiling of the demo's zero-shot VQA), and after no description (what the question alone tells it)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = (AutoModelForCausalLM if decoder_only else AutoModelForSeq2SeqLM).from_pretrained(str(folder)).eval()
    ann = root / "annotations"
    caps: Dict[int, List[str]] = {}
    for a in json.loads((ann / "captions_val.json").read_text())["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    truth = {a["question_id"]: (a["multiple_choice_answer"], a["answer_type"])
             for a in json.loads((ann / "vqa_annotations_val.json").read_text())["annotations"]}
    rng = random.Random(seed)
    result = {}
    for context in ("true caption", "no description"):
        hits: Dict[str, List[bool]] = {}
        for q in json.loads((ann / "vqa_questions_val.json").read_text())["questions"]:
            described = tok(rng.choice(caps[q["image_id"]]))["input_ids"] if context == "true caption" else []
            ids = torch.tensor([described + tok(f"question: {q['question']} answer:")["input_ids"]])
            out = model.generate(ids, max_new_tokens=3, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            answer = tok.decode(out[0, ids.shape[1]:] if decoder_only else out[0], skip_special_tokens=True)
            right, kind = truth[q["question_id"]]
            for key in ("all", kind):
                hits.setdefault(key, []).append(answer.strip() == right)
        result[context] = {k: 100.0 * sum(v) / len(v) for k, v in hits.items()}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.tiny_llm", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="projects/blip2/demo/stage2_shapes.yaml", help="the stage-2 config to build for")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as in train")
    # 2000: the frozen LLM's reading of the visual prompt is what zero-shot VQA needs most. On the demo's stage-1
    # checkpoint, stage 2 over an LLM trained 800 / 1400 / 2000 steps answers 34.4 / 45.9 / 50.3 % (the blind
    # baseline: 34.9), the LLM reading a true caption 68.0 / - / 77.7 % (docs/demo_diagnosis.md)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128, help="hidden size (heads of 32)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--force", action="store_true", help="rebuild an existing LLM folder")
    p.add_argument("--reading", action="store_true",
                   help="evaluate the existing LLM instead: its validation VQA accuracy reading a true caption "
                        "of the image, and reading none (writes reading.json beside it)")
    args = p.parse_args(argv)
    exp = load_experiment(args.cfg, args.options)
    out = Path(exp.model["llm"]["path"])
    kinds = {"opt": True, "flant5": False}  # the adapters this script builds an LLM for -> decoder-only?
    if exp.model["llm"]["name"] not in kinds:
        raise SystemExit(f"tiny_llm builds OPT or T5 models; the config's LLM is {exp.model['llm']['name']!r}")
    decoder_only = kinds[exp.model["llm"]["name"]]
    exists = (out / "config.json").is_file()
    if args.reading and not exists:
        raise SystemExit(f"tiny_llm --reading: no LLM in {out}; build it first (the same command without --reading)")
    if exists and not args.force and not args.reading:
        print(f"tiny LLM: {out} exists (--force rebuilds it)")
        return 0
    builder = next(iter(builders(exp).values()))
    builder.prepare(["train"])
    if args.reading:
        accuracy = reading(out, builder.root, decoder_only, args.seed)
        (out / "reading.json").write_text(json.dumps(accuracy, indent=1) + "\n")
        for context, acc in accuracy.items():
            print(f"tiny LLM reading {context}: VQA accuracy {acc['all']:.1f} ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in acc.items() if k != "all") + ")")
        return 0
    examples = shapes_texts(builder.root, args.seed)
    tokenizer = word_tokenizer([" ".join(e) for e in examples], decoder_only)
    record = train(examples, tokenizer, out, args.steps, args.batch_size, args.seed, args.width, args.layers,
                   decoder_only)
    print(f"tiny LLM: {record['parameters']:,} parameters, vocabulary {record['vocab']}, {record['texts']} texts; "
          f"loss {record['first_loss']:.2f} -> {record['final_loss']:.2f} in {record['steps']} steps; saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
