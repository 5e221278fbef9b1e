"""Build the demo's frozen LLM: a tiny OPT-architecture model trained briefly on the shapes text.

    python -m run_scripts.tiny_llm --cfg projects/blip2/demo/stage2_shapes.yaml

It reads the shapes set the config trains on (its training split only), builds a word-level tokenizer over
that text with ``tokenizers``, trains ``OPTForCausalLM`` from scratch on two kinds of text, each after a description of the image (one
of its captions): a caption ("<description> a photo of <caption>") and a question-answer pair ("<description>
question: <q> answer: <a>"), and writes model and tokenizer with ``save_pretrained`` to ``model.llm.path``,
where the ``opt`` adapter loads them like any Hugging Face checkpoint. The LLM thus learns to read captions and
answers off a description in its context; stage 2 teaches the Q-Former to put that description into the
visual prompt (it only ever trains on captions), and zero-shot VQA is the LLM reading its answer off the visual
prompt instead. An existing folder is kept (``--force`` rebuilds it).
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

from framework.cli import load_experiment
from framework.runner import builders

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2; </s> starts (as OPT's tokenizer does) and ends a text


def shapes_texts(root: Path, seed: int) -> List[Tuple[str, str]]:
    """(description, text) pairs from the generated set's training annotations."""
    ann = root / "annotations"
    caps: Dict[int, List[str]] = {}
    for a in json.loads((ann / "captions_train.json").read_text())["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    questions = json.loads((ann / "vqa_questions_train.json").read_text())["questions"]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads((ann / "vqa_annotations_train.json").read_text())["annotations"]}
    rng = random.Random(seed)
    pairs = [(rng.choice(cs), f"a photo of {c}") for cs in caps.values() for c in cs]
    pairs += [(rng.choice(caps[q["image_id"]]), f"question: {q['question']} answer: {answers[q['question_id']]}")
              for q in questions]
    return pairs


def word_tokenizer(texts: List[str]):
    """Lower-cased words and punctuation; the vocabulary in a fixed order (count, then word)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    counts = Counter(w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(t.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    tok.model = models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def train(texts: List[Tuple[str, str]], tokenizer, out: Path, steps: int, batch_size: int, seed: int, width: int,
          layers: int) -> Dict[str, float]:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    # [</s> description] [</s> text </s>]: the same layout as stage 2's [visual prompt] [</s> prompt target </s>]
    contexts = tokenizer([c for c, _ in texts])["input_ids"]
    ids = [c + t + [tokenizer.eos_token_id] for c, t in zip(contexts, tokenizer([t for _, t in texts])["input_ids"])]
    cfg = OPTConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                    num_attention_heads=width // 32, ffn_dim=4 * width, max_position_embeddings=128,
                    word_embed_proj_dim=width, dropout=0.0,
                    pad_token_id=0, bos_token_id=1, eos_token_id=1)
    model = OPTForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    losses = []
    for _ in tqdm(range(steps), desc="tiny LLM", unit="step"):
        rows = [ids[rng.randrange(len(ids))] for _ in range(batch_size)]
        longest = max(map(len, rows))
        batch = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
        mask = (torch.arange(longest)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        loss = model(input_ids=batch, attention_mask=mask, labels=batch.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    record = {"texts": len(texts), "vocab": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
              "steps": steps, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / 20}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.tiny_llm", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="projects/blip2/demo/stage2_shapes.yaml", help="the stage-2 config to build for")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as in train")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128, help="hidden size (heads of 32)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--force", action="store_true", help="rebuild an existing LLM folder")
    args = p.parse_args(argv)
    exp = load_experiment(args.cfg, args.options)
    out = Path(exp.model["llm"]["path"])
    if (out / "config.json").is_file() and not args.force:
        print(f"tiny LLM: {out} exists (--force rebuilds it)")
        return 0
    builder = next(iter(builders(exp).values()))
    builder.prepare(["train"])
    texts = shapes_texts(builder.root, args.seed)
    record = train(texts, word_tokenizer([c + " " + t for c, t in texts]), out, args.steps, args.batch_size, args.seed, args.width,
                   args.layers)
    print(f"tiny LLM: {record['parameters']:,} parameters, vocabulary {record['vocab']}, {record['texts']} texts; "
          f"loss {record['first_loss']:.2f} -> {record['final_loss']:.2f} in {record['steps']} steps; saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
