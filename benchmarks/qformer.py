"""Q-Former forward + backward: ours against transformers' Blip2QFormerModel with the same weights.

    python benchmarks/qformer.py [--out benchmarks/results/qformer_cpu.json] [--repeats 5]

Sizes are BLIP-2's (768 wide, 12 layers, 32 queries, 257 image tokens of width 1408, batch 8); dropout is on
(training mode), as in stage 1. Both models get the same weights through our key map, and the outputs are
checked equal before timing. Writes JSON with the median seconds per step and the ratios.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
import statistics
import time
from contextlib import nullcontext

import torch

from framework.models.qformer import QFormer
from plugins.formats.hf_blip2 import key_table
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package, run as a script
from benchmarks.output import write_results  # noqa: E402


def build(impl: str):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(0)
    cfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                             encoder_hidden_size=1408, cross_attention_frequency=2)
    hf = Blip2QFormerModel._from_config(cfg, attn_implementation=impl)
    ours = QFormer(vision_width=1408, num_query_tokens=32)
    state, _ = key_table(0, cfg.num_hidden_layers).to_ours({f"qformer.{k}": v for k, v in hf.state_dict().items()},
                                                           "Blip2QFormerModel")
    ours.load_state_dict({k.removeprefix("qformer."): v for k, v in state.items()}, strict=False)
    return hf, ours


def step_ours(model: QFormer, image: torch.Tensor) -> torch.Tensor:
    return model("itc", image=image).hidden


def step_hf(model, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return model(query_embeds=queries, encoder_hidden_states=image).last_hidden_state


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/qformer_cpu.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    image = torch.randn(args.batch, 257, 1408)
    results = {"device": "cpu", "batch": args.batch, "runs": {}}
    for impl in ("sdpa", "eager"):
        hf, ours = build(impl)
        queries = ours.query_tokens.detach().expand(args.batch, -1, -1).clone().requires_grad_(True)
        with torch.no_grad():
            hf.eval(), ours.eval()
            diff = (step_hf(hf, ours.query_tokens.expand(args.batch, -1, -1), image) - step_ours(ours, image)).abs().max()
        hf.train(), ours.train()
        for amp in ("fp32", "bf16"):
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

            def run_hf():
                with ctx():
                    out = step_hf(hf, queries, image)
                out.float().sum().backward()

            def run_ours():
                with ctx():
                    out = step_ours(ours, image)
                out.float().sum().backward()

            t_hf, t_ours = timeit(run_hf, args.repeats), timeit(run_ours, args.repeats)
            key = f"{amp}/hf_{impl}"
            results["runs"][key] = {"hf_s": t_hf, "ours_s": t_ours, "speedup": t_hf / t_ours,
                                    "max_abs_diff_eval_fp32": float(diff)}
            print(f"{key:16s} transformers {t_hf * 1000:8.1f} ms   ours {t_ours * 1000:8.1f} ms   "
                  f"x{t_hf / t_ours:.2f}   (outputs differ by {float(diff):.1e})", flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
