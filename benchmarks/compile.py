"""``run.compile``: a training step of each stage with its parts compiled by inductor against the same model
eager, on the CPU, in one run.

    python benchmarks/compile.py [--steps 6] [--out benchmarks/results/compile_cpu.json]

The CPU size of ``benchmarks/grad_checkpointing.py``: a frozen EVA-style ViT (384 wide, 6 blocks, 112 px, patch 8:
197 tokens), a 4-layer 384-wide Q-Former with 32 queries, a tiny OPT for stage 2, batch 16, fp32, dropout off (so
the two models draw the same random numbers). Each stage builds both models from one seed and alternates their
steps (each with its own AdamW); the first compiled step includes the compilation and is reported apart.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.output import write_results  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402
from framework.models.build import build_model, compile_parts  # noqa: E402


def _config(work: Path, stage: str) -> Dict[str, Any]:
    from helpers import stage1_config, stage2_config
    from tiny_bert import make_tiny_bert, vocab_size

    bert = work / "bert384"
    if not bert.exists():
        make_tiny_bert(bert, hidden=384, layers=4, heads=6, intermediate=1536)
    cfg = (stage1_config if stage == "stage1" else stage2_config)(work, work / "out")
    model = cfg["model"]
    model["image_encoder"].update(image_size=112, width=384, depth=6, heads=6, mlp_dim=1536)
    model["qformer"].update(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536, bert=str(bert),
                            vocab_size=vocab_size(bert), num_query_tokens=32, dropout=0.0, attention_dropout=0.0)
    if stage == "stage1":
        model["embed_dim"] = 256
    return cfg


def _stage(work: Path, stage: str, steps: int) -> Dict[str, Any]:
    from helpers import write_yaml

    spec = load_experiment(str(write_yaml(work / f"{stage}.yaml", _config(work, stage)))).model
    models, optims = {}, {}
    for name in ("eager", "inductor"):
        torch.manual_seed(0)
        models[name] = build_model(spec)
        if name == "inductor":
            compile_parts(models[name], "inductor")
        models[name].train()
        optims[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-4)
    texts = ["a red circle on the left and a blue square", "two shapes", "a green triangle in the middle",
             "three shapes: a yellow circle, a red square and a blue triangle"]
    times: Dict[str, list] = {n: [] for n in models}
    losses: Dict[str, list] = {n: [] for n in models}
    for step in range(steps + 1):
        g = torch.Generator().manual_seed(step)
        batch = {"image": torch.randn(16, 3, 112, 112, generator=g), "text_input": texts * 4, "prompt": [""] * 16,
                 "image_id": torch.arange(16)}
        for name, model in models.items():
            torch.manual_seed(100 + step)  # ITM's negatives: the same draws for both
            t0 = time.perf_counter()
            loss = model(batch)["loss"]
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss.item())
        print(f"{stage} step {step}: " + "   ".join(f"{n} {times[n][-1]:.2f} s loss {losses[n][-1]:.6f}"
                                                  for n in models), flush=True)
    out: Dict[str, Any] = {n: {"first_step_seconds": times[n][0], "seconds_per_step": statistics.median(times[n][1:]),
                               "losses": losses[n]} for n in models}
    out["speedup"] = out["eager"]["seconds_per_step"] / out["inductor"]["seconds_per_step"]
    out["compile_seconds"] = out["inductor"]["first_step_seconds"] - out["eager"]["first_step_seconds"]
    out["max_loss_difference"] = max(abs(a - b) for a, b in zip(losses["eager"], losses["inductor"]))
    print(f"{stage}: eager {out['eager']['seconds_per_step']:.3f} s, inductor "
          f"{out['inductor']['seconds_per_step']:.3f} s per step ({out['speedup']:.2f}x), compiling "
          f"{out['compile_seconds']:.0f} s, losses within {out['max_loss_difference']:.2e}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps after the first")
    p.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    p.add_argument("--out", default="benchmarks/results/compile_cpu.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compile-"))
    results = {"batch": 16, "steps": args.steps}
    for stage in args.stages:
        results[stage] = _stage(work, stage, args.steps)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
