"""Ours against LAVIS 1.0.2 itself (the code that produced the paper's numbers), the same weights and inputs,
LAVIS in its own venv (``.venv-lavis``, ``make lavis``) as a subprocess (``benchmarks/lavis_side.py``), the two
alternating within one run (``--rounds``); outputs are compared in the same run; timings are medians.

    python benchmarks/vs_lavis.py [--out benchmarks/results/vs_lavis_cpu.json] [--parts stage1 stage2 retrieval]

* ``stage1``: the stage-1 step (ITC + ITM + ITG, forward and backward; the same ITM negatives from the same seed)
  at the paper's Q-Former size (BERT-base: 768 wide, 12 layers, 32 queries, cross-attention every 2 layers)
  reading 257 tokens of width 1408 (EVA ViT-g's; ``--vit-depth`` frozen blocks, to keep a CPU run short).
* ``stage2``: Blip2OPT's LM step (forward and backward), caption generation (beam 5, "a photo of") and VQA answers
  (one image at a time: LAVIS 1.0.2's Blip2OPT has no batched ``predict_answers``) over an OPT-125M-sized OPT.
* ``retrieval``: the paper's protocol scaled (ITC over every pair, each image's and each text's ``k`` best
  re-ranked by ITM). LAVIS's ``compute_sim_matrix`` runs ITM once per pair and direction, the image's tokens
  repeated per pair, the text padded to 35 tokens; ours scores each pair once, grouped by image, its keys/values
  projected once (``plugins/tasks/retrieval.py``). The Q-Former here is ``--layers`` deep (the paper's width).
Random weights; COCO-like texts of 8-14 words; fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lavis_oracle import lavis_bert  # noqa: E402  (a BERT folder LAVIS finds as bert-base-uncased)
from tiny_bert import CORPUS  # noqa: E402

from benchmarks.output import write_results  # noqa: E402
from framework.commands.convert import main as convert_main  # noqa: E402
from framework.engine.experiment import load_model_file  # noqa: E402
from framework.models.build import build_model  # noqa: E402

LAVIS_PY = REPO / ".venv-lavis" / "bin" / "python"


def run_lavis(job: str, work: Path, spec: Dict[str, Any]) -> Dict[str, Any]:
    if not LAVIS_PY.exists():
        sys.exit(f"the LAVIS venv is missing ({LAVIS_PY}): run `make lavis` first")
    torch.save(spec, work / "spec.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(LAVIS_PY), str(REPO / "benchmarks" / "lavis_side.py"), job, str(work)], cwd=work,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"LAVIS side of {job!r} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return torch.load(work / "out.pt", weights_only=False)


class RetrievalSet(torch.utils.data.Dataset):
    """A retrieval split in memory: image i owns texts ``img2txt[i]``."""

    def __init__(self, images: torch.Tensor, texts: List[str], per_image: int) -> None:
        self.images, self.texts = images, texts
        self.img2txt = [list(range(i * per_image, (i + 1) * per_image)) for i in range(len(images))]
        self.txt2img = [t // per_image for t in range(len(texts))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"image": self.images[i], "index": i}


def ours_from_lavis(state: Dict[str, torch.Tensor], work: Path, options: List[str], sets: List[str]):
    """Our model from LAVIS's ``state`` through ``framework.convert --from lavis`` (``options``: what LAVIS's files
    do not hold), built with ``sets``."""
    torch.save({"model": state}, work / "lavis.pth")
    out = work / "conv"
    if out.exists():
        shutil.rmtree(out)
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(work / "lavis.pth"), "--out", str(out),
                         "--options", "model.image_encoder.heads=16", "model.qformer.num_heads=12",
                         "model.image_encoder.precision=fp32", *options]) == 0
    return build_model(load_model_file(out / "model.yaml", ["model.qformer.dropout=0.0",
                                                           "model.qformer.attention_dropout=0.0", *sets]))


def top_orders_equal(theirs: torch.Tensor, ours: torch.Tensor, k: int) -> float:
    """Fraction of rows whose ``k`` best candidates come in the same order in both."""
    a = theirs.topk(k, dim=1).indices
    b = ours.topk(k, dim=1).indices
    return float((a == b).all(1).float().mean())


def retrieval(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    from plugins.tasks.retrieval import Retrieval

    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, 224, 224, generator=g)
    words = sorted({w for line in CORPUS for w in line.split() if w.isalpha()})
    texts = [" ".join(words[int(w)] for w in torch.randint(0, len(words), (int(n),), generator=g))
             for n in torch.randint(8, 15, (args.images * 5,), generator=g)]
    bert = lavis_bert(work, hidden=768, layers=args.layers, heads=12, intermediate=3072)
    spec = dict(seed=0, perturb=0.02, num_query_tokens=32, cross_attention_freq=2, embed_dim=256, max_txt_len=35,
                vision=dict(image_size=224, patch_size=14, width=1408, depth=args.vit_depth, heads=16, mlp_dim=6144),
                images=images, texts=texts, image_batch_size=16, threads=torch.get_num_threads(), repeats=1)
    data = RetrievalSet(images, texts, 5)
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model, results = None, {}
    for k in args.k:
        lavis_s, ours_s, lavis_out, ours_i2t = [], [], None, None
        for _ in range(args.rounds):
            lavis_out = run_lavis("retrieval", work, {**spec, "k_test": k})
            lavis_s += lavis_out["seconds"]
            if model is None:
                model = ours_from_lavis(lavis_out["state_dict"], work, [f"model.qformer.bert={bert}"],
                                        ["model.max_txt_len=35"]).eval()
            task = Retrieval(k_test=k, itm_batch_size=128)
            captured = {}
            from plugins.tasks import retrieval as module
            rerank = module.rerank_both

            def capturing(*a, **kw):
                captured["out"] = rerank(*a, **kw)
                return captured["out"]

            module.rerank_both = capturing
            try:
                start = time.perf_counter()
                metrics = task.evaluate(model, loader)
                ours_s.append(time.perf_counter() - start)
            finally:
                module.rerank_both = rerank
            ours_i2t, ours_t2i = captured["out"]
        pairs_lavis = (len(images) + len(texts)) * k
        wanted = torch.zeros(len(images), len(texts), dtype=torch.bool)
        sims_top = lavis_out["i2t"] > -100  # LAVIS: -100 where a pair was not re-ranked
        wanted |= sims_top
        wanted |= (lavis_out["t2i"] > -100).t()
        t_l, t_o = statistics.median(lavis_s), statistics.median(ours_s)
        results[f"k{k}"] = {
            "k_test": k, "seconds": {"lavis": lavis_s, "ours": ours_s}, "speedup_ours": t_l / t_o,
            "itm_pairs": {"lavis": pairs_lavis, "ours": int(wanted.sum())},
            "same_top_k_order_i2t": top_orders_equal(lavis_out["i2t"], ours_i2t, k),
            "same_top_k_order_t2i": top_orders_equal(lavis_out["t2i"], ours_t2i, k),
            "max_abs_score_diff_i2t": float((lavis_out["i2t"] - ours_i2t)[sims_top].abs().max()),
            "r_mean_ours": metrics["r_mean"]}
        print(f"retrieval k={k}: LAVIS {t_l:7.1f} s   ours {t_o:7.1f} s   speed-up {t_l / t_o:5.2f}x   "
              f"ITM pairs {pairs_lavis} -> {int(wanted.sum())}   same top-k order "
              f"{results[f'k{k}']['same_top_k_order_i2t']:.3f} / {results[f'k{k}']['same_top_k_order_t2i']:.3f}",
              flush=True)
    return {"sizes": f"{args.images} images x {len(texts)} texts; Q-Former 768 wide, {args.layers} layers, 32 "
                     f"queries, cross-attention every 2; 257 image tokens x 1408 ({args.vit_depth} EVA blocks)",
            **results}


def _texts(n: int, g: torch.Generator) -> List[str]:
    """COCO-like captions: 8 to 14 words."""
    words = sorted({w for line in CORPUS for w in line.split() if w.isalpha()})
    return [" ".join(words[int(w)] for w in torch.randint(0, len(words), (int(k),), generator=g))
            for k in torch.randint(8, 15, (n,), generator=g)]


def _timed(fn, repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def stage1(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """The stage-1 step: ITC + ITM + ITG, forward and backward, the same ITM negatives (the same seed)."""
    g = torch.Generator().manual_seed(1)
    b = args.stage1_batch
    images, texts = torch.randn(b, 3, 224, 224, generator=g), _texts(b, g)
    bert = lavis_bert(work, hidden=768, layers=12, heads=12, intermediate=3072)
    spec = dict(seed=0, sample_seed=3, perturb=0.02, num_query_tokens=32, cross_attention_freq=2, embed_dim=256,
                max_txt_len=32, vision=dict(image_size=224, patch_size=14, width=1408, depth=args.vit_depth, heads=16,
                                            mlp_dim=6144),
                images=images, texts=texts, threads=torch.get_num_threads(), repeats=args.repeats)
    model, theirs, mine, lavis_losses, our_losses = None, [], [], None, []
    for _ in range(args.rounds):
        out = run_lavis("stage1_step", work, spec)
        theirs += out["seconds"][1:]  # the first is a warm-up
        lavis_losses = out["losses"][0]
        if model is None:
            model = ours_from_lavis(out["state_dict"], work, [f"model.qformer.bert={bert}"], ["model.max_txt_len=32"])
            model.train()
            model.image_encoder.eval()

        def step() -> None:
            torch.manual_seed(spec["sample_seed"])
            losses = model({"image": images, "text_input": texts})
            losses["loss"].backward()
            model.zero_grad(set_to_none=True)
            our_losses.append({k: float(losses[f"loss_{k}"].detach()) for k in ("itc", "itm", "itg")})

        mine += _timed(step, args.repeats)[1:]
    t_l, t_o = statistics.median(theirs), statistics.median(mine)
    diff = max(abs(our_losses[0][k] - lavis_losses[k]) for k in lavis_losses)
    print(f"stage-1 step:      LAVIS {t_l:6.2f} s   ours {t_o:6.2f} s   speed-up {t_l / t_o:5.2f}x   "
          f"largest loss difference {diff:.1e}", flush=True)
    return {"sizes": f"batch {b}; Q-Former BERT-base (768 wide, 12 layers, 32 queries, cross-attention every 2) "
                     f"reading 257 image tokens x 1408 ({args.vit_depth} frozen EVA blocks)",
            "seconds": {"lavis": theirs, "ours": mine}, "speedup_ours": t_l / t_o,
            "losses": {"lavis": lavis_losses, "ours": our_losses[0]}, "largest_loss_difference": diff}


def _opt_folder(folder: Path) -> Path:
    """An OPT-125M-sized OPT (768 wide, 12 layers) with random weights held in exact fp16 values (LAVIS loads OPT
    in fp16) and the tests' byte-level BPE tokenizer."""
    from tiny_llms import opt_bpe_tokenizer
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    opt_bpe_tokenizer(folder)
    tok = GPT2Tokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                    max_position_embeddings=2048, word_embed_proj_dim=768, pad_token_id=1, bos_token_id=2,
                    eos_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = OPTForCausalLM(cfg).half().float()
    model.save_pretrained(str(folder))
    return folder


def stage2(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """The stage-2 OPT step (forward and backward), captions (beam 5) and VQA answers (one image at a time, as
    LAVIS 1.0.2 can), the same outputs checked."""
    g = torch.Generator().manual_seed(2)
    b = args.stage2_batch
    images, captions = torch.randn(b, 3, 224, 224, generator=g), _texts(b, g)
    questions = [f"what color is the {s}?" for s in ["circle", "square", "triangle", "circle"] * b][:b]
    lavis_bert(work, hidden=768, layers=12, heads=12, intermediate=3072)
    opt = _opt_folder(work / "opt")
    spec = dict(seed=0, perturb=0.02, num_query_tokens=32, max_txt_len=32,
                vision=dict(image_size=224, patch_size=14, width=1408, depth=args.vit_depth, heads=16, mlp_dim=6144),
                images=images, captions=captions, questions=questions, threads=torch.get_num_threads(),
                repeats=args.repeats, caption_decoding=dict(prompt="a photo of", num_beams=5, max_length=30,
                                                            min_length=8),
                vqa_decoding=dict(prompt="Question: {} Answer:", num_beams=5, max_length=10, min_length=1,
                                  length_penalty=0.0))
    c, v = spec["caption_decoding"], spec["vqa_decoding"]
    model, theirs, mine, lavis_out, ours_out = None, {}, {}, None, {}
    for _ in range(args.rounds):
        lavis_out = run_lavis("opt", work, spec)
        for k, t in lavis_out["seconds"].items():
            theirs.setdefault(k, []).extend(t[1:])
        if model is None:
            model = ours_from_lavis(lavis_out["state_dict"], work, [f"model.llm.path={opt}",
                                                                    "model.llm.precision=fp32"], [])

        def lm_step() -> None:
            model.train()
            loss = model({"image": images, "text_input": captions, "prompt": [""] * b})["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
            ours_out["loss"] = float(loss.detach())

        @torch.no_grad()
        def caption() -> None:
            model.eval()
            ours_out["captions"] = model.generate(images, [c["prompt"]] * b, num_beams=c["num_beams"],
                                                  max_new_tokens=c["max_length"], min_length=c["min_length"])

        @torch.no_grad()
        def vqa() -> None:
            model.eval()
            ours_out["answers"] = [model.generate(images[i:i + 1], [v["prompt"].format(q)], num_beams=v["num_beams"],
                                                  max_new_tokens=v["max_length"], min_length=v["min_length"],
                                                  length_penalty=v["length_penalty"])[0]
                                   for i, q in enumerate(questions)]

        for name, fn in (("lm_step", lm_step), ("caption", caption), ("vqa", vqa)):
            mine.setdefault(name, []).extend(_timed(fn, args.repeats)[1:])
    out = {"sizes": f"batch {b}; the stage-1 sizes' Q-Former and encoder ({args.vit_depth} EVA blocks); an OPT-125M-"
                    f"sized OPT (768 wide, 12 layers, the tests' BPE vocabulary of "
                    f"{model.llm.model.config.vocab_size}), fp32",
           "checks": {"loss": {"lavis": lavis_out["loss"], "ours": ours_out["loss"]},
                      "captions_identical": lavis_out["captions"] == ours_out["captions"],
                      "answers_identical": lavis_out["answers"] == ours_out["answers"],
                      "first_caption": {"lavis": lavis_out["captions"][0], "ours": ours_out["captions"][0]}},
           "seconds": {"lavis": theirs, "ours": mine}, "speedup_ours": {}}
    for name in mine:
        t_l, t_o = statistics.median(theirs[name]), statistics.median(mine[name])
        out["speedup_ours"][name] = t_l / t_o
        print(f"stage 2 {name:9s}: LAVIS {t_l:6.2f} s   ours {t_o:6.2f} s   speed-up {t_l / t_o:5.2f}x", flush=True)
    print(json.dumps(out["checks"]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/vs_lavis_cpu.json")
    p.add_argument("--rounds", type=int, default=2, help="LAVIS then ours, this many times; medians reported")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--layers", type=int, default=2,
                   help="retrieval's Q-Former depth (the paper: 12; every 2nd layer cross-attends)")
    p.add_argument("--vit-depth", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per round of each side (the first a warm-up)")
    p.add_argument("--stage1-batch", type=int, default=8)
    p.add_argument("--stage2-batch", type=int, default=4)
    p.add_argument("--parts", nargs="+", default=["stage1", "stage2", "retrieval"],
                   choices=["stage1", "stage2", "retrieval"])
    args = p.parse_args()
    out = {"device": "cpu", "rounds": args.rounds}
    parts = {"stage1": stage1, "stage2": stage2, "retrieval": retrieval}
    for name in args.parts:  # each in a folder of its own: LAVIS finds its BERT as ./bert-base-uncased
        work = Path(tempfile.mkdtemp(prefix=f"vs_lavis-{name}-"))
        out[name] = parts[name](args, work)
    write_results(args.out, out)


if __name__ == "__main__":
    main()
