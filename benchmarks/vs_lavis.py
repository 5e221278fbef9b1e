"""Ours against LAVIS 1.0.2 itself (the code that produced the paper's numbers), the same weights and inputs,
LAVIS in its own venv (``.venv-lavis``, ``make lavis``) as a subprocess (``benchmarks/lavis_side.py``), the two
alternating within one run. Outputs are compared in the same run; timings are medians over the rounds.

    python benchmarks/vs_lavis.py [--out benchmarks/results/vs_lavis_cpu.json] [--rounds 2]

Retrieval evaluation (the paper's protocol, scaled): ITC between every image and every text, then each image's
and each text's ``k`` best candidates re-ranked by ITM. LAVIS's ``compute_sim_matrix`` runs ITM once per pair
and direction, the image's tokens repeated per pair and the text padded to 35 tokens; ours scores each pair once,
grouped by image, the image's keys/values projected once (``plugins/tasks/retrieval.py``). Sizes: the paper's
Q-Former width (BERT-base: 768 wide, 12 heads, 32 queries, cross-attention every 2 layers; ``--layers`` of
depth, 12 in the paper) reading 257 tokens of width 1408 (EVA ViT-g's; ``--vit-depth`` blocks, frozen, to keep a
CPU run short), random weights, 5 captions of 8-14 words per image as COCO has, fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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

from framework.cli import load_model_file  # noqa: E402
from framework.convert import main as convert_main  # noqa: E402
from framework.models.build import build_model  # noqa: E402
from lavis_oracle import lavis_bert  # noqa: E402  (a BERT folder LAVIS finds as bert-base-uncased)
from tiny_bert import CORPUS  # noqa: E402

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


def ours_from_lavis(state: Dict[str, torch.Tensor], bert: Path, work: Path, heads: int):
    torch.save({"model": state}, work / "lavis.pth")
    out = work / "conv"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(work / "lavis.pth"), "--out", str(out),
                         "--options", "model.image_encoder.heads=16", f"model.qformer.num_heads={heads}",
                         "model.image_encoder.precision=fp32", f"model.qformer.bert={bert}"]) == 0
    return build_model(load_model_file(out / "model.yaml", ["model.max_txt_len=35"])).eval()


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
                model = ours_from_lavis(lavis_out["state_dict"], bert, work, heads=12)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/vs_lavis_cpu.json")
    p.add_argument("--rounds", type=int, default=2, help="LAVIS then ours, this many times; medians reported")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--layers", type=int, default=4, help="Q-Former depth (the paper: 12)")
    p.add_argument("--vit-depth", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vs_lavis-"))
    out = {"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
           "retrieval": retrieval(args, work)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
