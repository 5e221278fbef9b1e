"""Ours against transformers' Blip2ForConditionalGeneration, the same weights in both (converted with
``framework.convert``): Q-Former forward + backward, the stage-2 LM loss forward + backward, and caption
generation with beam 5.

    python benchmarks/vs_hf.py [--out benchmarks/results/vs_hf_cpu.json] [--repeats 3]

Sizes: BLIP-2's Q-Former (768 wide, 12 layers, 32 queries) reading 257 tokens of width 1408 from an EVA-style
encoder (224 px, patch 14; 2 blocks here, frozen, to keep a CPU run short), and an OPT-125M-sized LLM (768 wide,
12 layers, vocabulary 50272), random weights, batch 4, fp32. transformers runs with SDPA attention (its fastest
here; the setting used is recorded). Outputs are compared before timing: losses, Q-Former outputs and generated
tokens. Writes JSON with the median seconds of each and ours' speed-up (theirs / ours).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.output import write_results  # noqa: E402
from benchmarks.qformer import timeit  # noqa: E402  (median seconds after a warm-up)
from framework.commands.convert import read  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402
from framework.models.build import build_model  # noqa: E402

WORDS = [f"w{i}" for i in range(50000)]


def make_hf(folder: Path, impl: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "<image>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
    vision = Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=2, num_attention_heads=16,
                               image_size=224, patch_size=14)
    # no dropout: the two must compute the same numbers (dropout masks are drawn differently)
    qformer = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, encoder_hidden_size=1408, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    text = OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                     max_position_embeddings=2048, word_embed_proj_dim=768, pad_token_id=0, bos_token_id=1,
                     eos_token_id=1, dropout=0.0, attention_dropout=0.0)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=32, image_token_index=3)
    torch.manual_seed(0)
    hf = Blip2ForConditionalGeneration(config)
    hf.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return Blip2ForConditionalGeneration.from_pretrained(str(folder), attn_implementation=impl), fast


def make_ours(src: Path, work: Path):
    read("hf", src, work / "conv", [])
    cfg = work / "ours.yaml"
    cfg.write_text(f"_base_: {work / 'conv' / 'model.yaml'}\n"
                   "model: {image_encoder: {precision: fp32}, llm: {precision: fp32}, qformer: {dropout: 0.0, "
                   "attention_dropout: 0.0}}\n"
                   "task: {name: captioning}\ndatasets: {shapes_caption: {image_size: 224}}\n")
    return build_model(load_experiment(str(cfg)).model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/vs_hf_cpu.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=20)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vs_hf-"))
    hf, tok = make_hf(work / "hf", "sdpa")
    ours = make_ours(work / "hf", work)
    hf.train(), ours.train()  # training mode with dropout 0 in both: the frozen parts stay in eval
    hf.vision_model.eval(), hf.language_model.eval()
    for p_ in list(hf.vision_model.parameters()) + list(hf.language_model.parameters()):
        p_.requires_grad_(False)

    b = args.batch
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, 3, 224, 224, generator=g)
    targets = [" ".join(f"w{int(i)}" for i in torch.randint(0, 50000, (12,), generator=g)) for _ in range(b)]
    target_ids = [tok(t, add_special_tokens=False)["input_ids"] + [1] for t in targets]
    input_ids = torch.tensor([[3] * 32 + [1] + t for t in target_ids])
    labels = torch.tensor([[-100] * 33 + t for t in target_ids])
    with torch.no_grad():
        image_tokens = hf.vision_model(pixel_values=images).last_hidden_state  # post_layernorm = ln_vision

    def qformer_hf():
        out = hf.qformer(query_embeds=hf.query_tokens.expand(b, -1, -1), encoder_hidden_states=image_tokens)
        out.last_hidden_state.sum().backward()
        return out.last_hidden_state

    def qformer_ours():
        out = ours.qformer("itc", image=image_tokens).hidden
        out.sum().backward()
        return out

    def loss_hf():
        loss = hf(pixel_values=images, input_ids=input_ids, labels=labels).loss
        loss.backward()
        return loss

    def loss_ours():
        loss = ours({"image": images, "text_input": targets, "prompt": [""] * b})["loss"]
        loss.backward()
        return loss

    def generate_hf():
        with torch.no_grad():
            out = hf.generate(pixel_values=images, input_ids=torch.tensor([[3] * 32 + [1]] * b), num_beams=5,
                              max_new_tokens=args.new_tokens, min_new_tokens=1, do_sample=False)
        return [t.strip() for t in tok.batch_decode(out[:, 33:] if out.shape[1] > 33 else out,
                                                    skip_special_tokens=True)]

    def generate_ours():
        return ours.generate(images, [""] * b, num_beams=5, max_new_tokens=args.new_tokens, min_new_tokens=1)

    with torch.no_grad():
        vision_diff = (ours.encode_image(images) - image_tokens).abs().max()
    checks = {
        "image_tokens_max_abs_diff": float(vision_diff),
        "qformer_max_abs_diff": float((qformer_hf() - qformer_ours()).detach().abs().max()),
        "lm_loss_hf": float(loss_hf().detach()), "lm_loss_ours": float(loss_ours().detach()),
    }
    theirs_text, ours_text = generate_hf(), generate_ours()
    checks["generations_identical"] = theirs_text == ours_text
    checks["generations_first"] = {"transformers": theirs_text[0], "ours": ours_text[0]}
    results = {"device": "cpu", "batch": b, "hf_attention": "sdpa",
               "sizes": "Q-Former 768x12, 32 queries, 257 image tokens x 1408 (2 EVA blocks), OPT-125M-sized LLM",
               "checks": checks, "seconds": {}, "speedup_ours": {}}
    for name, (theirs, mine) in {"qformer_fwd_bwd": (qformer_hf, qformer_ours), "lm_loss_fwd_bwd": (loss_hf, loss_ours),
                                 "generate_beam5": (generate_hf, generate_ours)}.items():
        t_hf, t_ours = timeit(theirs, args.repeats), timeit(mine, args.repeats)
        results["seconds"][name] = {"transformers": t_hf, "ours": t_ours}
        results["speedup_ours"][name] = t_hf / t_ours
        print(f"{name:18s} transformers {t_hf:7.3f} s   ours {t_ours:7.3f} s   speed-up {t_hf / t_ours:5.2f}x",
              flush=True)
    print(json.dumps(checks))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
