"""``python -m run_scripts.cross_attention --cfg STAGE1.yaml --runs NAME="OPTIONS" ... --out DIR``: whether the
queries read the image in the first steps of stage 1.

Each run trains the config (with its ``--options``, e.g. ``model.qformer.cross_attention_freq=1``) through the
ordinary runner for ``--steps`` iterations, and at every training step records, per cross-attention layer:

* the entropy of the queries' attention over the image tokens, as a fraction of its maximum ``ln(tokens)``
  (1.0: every query spreads its attention evenly, reading the average token, the same for every query; lower:
  queries pick tokens), for the queries' first pass of the step (ITC's; no text in the sequence);
* the gradient norm reaching the layer's cross-attention weights (query, key and value projections) beside the
  one reaching its self-attention: whether any loss signal flows into reading the image.

Writes ``cross_attention.json`` and ``cross_attention.png`` (one panel per quantity, a line per run and layer)
into ``--out``; each run's own files go to ``--out/NAME``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from framework.engine.experiment import load_experiment
from framework.models.qformer import CrossAttention


def record_run(cfg: str, options: List[str], out: Path, steps: int) -> Dict[str, Dict[str, List[float]]]:
    """Train ``steps`` iterations; per cross-attention layer, a value per step of each recorded quantity."""
    from framework.engine.runner import Runner

    exp = load_experiment(cfg, options + [f"run.output_dir={out}", f"run.max_iters={steps}", "run.eval_splits=[]",
                                          "run.test_splits=[]", "run.tensorboard=false"])
    runner = Runner(exp)
    qformer = runner.model.qformer
    layers = {f"layer {i}": layer for i, layer in enumerate(qformer.layers) if layer.cross is not None}
    series: Dict[str, Dict[str, List[float]]] = {n: {"entropy": [], "grad_cross": [], "grad_self": []} for n in layers}
    seen: Dict[str, int] = {n: -1 for n in layers}

    def entropy_hook(name: str):
        def hook(module: CrossAttention, args, _output) -> None:
            x, (k, _v), _mask = args
            if not module.training or seen[name] == runner.it:  # the step's first pass only
                return
            seen[name] = runner.it
            b, n, d = x.shape
            with torch.no_grad():
                q = module.q(x).view(b, n, module.heads, -1).transpose(1, 2)
                p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
                h = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
            series[name]["entropy"].append(float(h) / math.log(k.shape[-2]))
        return hook

    for name, layer in layers.items():
        layer.cross.register_forward_hook(entropy_hook(name))

    def grad_norm(params) -> float:
        return float(torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params if p.grad is not None)))

    def before_step(_optimizer, _args, _kwargs) -> None:  # the gradients the optimizer is about to apply
        for name, layer in layers.items():
            series[name]["grad_cross"].append(grad_norm(layer.cross.parameters()))
            series[name]["grad_self"].append(grad_norm(layer.attn.parameters()))

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        runner.train()
    finally:
        handle.remove()
    return series


def plot(results: Dict[str, Dict[str, Dict[str, List[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"entropy": "cross-attention entropy / ln(tokens)", "grad_cross": "grad norm, cross-attention",
              "grad_self": "grad norm, self-attention"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, key in zip(axes, titles):
        for run, layers in results.items():
            for layer, s in layers.items():
                ax.plot(range(1, len(s[key]) + 1), s[key], label=f"{run}, {layer}")
        ax.set_title(titles[key])
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if key != "entropy":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.cross_attention", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True, help="a stage-1 config")
    p.add_argument("--runs", nargs="+", required=True, metavar='NAME="KEY=VALUE ..."',
                   help="a name and the --options of each run (an empty string: the config as it is)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", required=True, help="folder for the JSON, the plot and the runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = {}
    for spec in args.runs:
        name, _, options = spec.partition("=")
        results[name] = record_run(args.cfg, shlex.split(options), out / name, args.steps)
        for layer, s in results[name].items():
            print(f"{name} {layer}: entropy {s['entropy'][0]:.3f} -> {s['entropy'][-1]:.3f}, cross-attention grad "
                  f"{s['grad_cross'][0]:.2e} -> {s['grad_cross'][-1]:.2e} (self-attention {s['grad_self'][0]:.2e} "
                  f"-> {s['grad_self'][-1]:.2e})", flush=True)
    (out / "cross_attention.json").write_text(json.dumps(results) + "\n")
    plot(results, out / "cross_attention.png")
    print(f"wrote {out / 'cross_attention.json'} and {out / 'cross_attention.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
