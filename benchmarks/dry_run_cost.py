"""What an iteration of each real-size config costs, estimated as ``--dry-run`` does (``framework.engine.cost``), with the
time the estimate takes; JSON and the table of docs/benchmarks.md.

    python benchmarks/dry_run_cost.py [--out benchmarks/results/dry_run_cost.json]

The paper trained every model on 16 A100-40GB (one node of 16): per GPU, stage 1 at 1680 / 16 = 105 (ViT-g) and
2320 / 16 = 145 (ViT-L) samples, stage 2 at 1920 / 16 = 120 (OPT) and 1520 / 16 = 95 (FlanT5).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.output import write_results  # noqa: E402
from framework.engine.cost import step_cost  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402

CONFIGS = ["stage1_vitg", "stage1_vitl", "stage2_vitl_opt2.7b", "stage2_opt2.7b", "stage2_opt6.7b",
           "stage2_vitl_flant5xl", "stage2_flant5xl", "stage2_flant5xxl"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/dry_run_cost.json")
    args = p.parse_args()
    rows = {}
    for name in CONFIGS:
        exp = load_experiment(str(REPO / "projects" / "blip2" / f"{name}.yaml"))
        start = time.perf_counter()
        cost = step_cost(exp)
        seconds = time.perf_counter() - start
        rows[name] = {**cost.report(), "accum_steps": exp.run.accum_steps, "amp": exp.run.amp,
                      "estimate_seconds": seconds}
        r = rows[name]
        print(f"| `{name}` | {r['batch']} | {r['tflops']:.1f} | {r['peak_gib']:.1f} "
              f"({r['weights_gib']:.1f} + {r['grads_and_adamw_gib']:.1f} + {r['activations_gib']:.1f}) | "
              f"{r['largest_batch_40gb']} | {r['largest_batch_80gb']} | {seconds:.1f} s |", flush=True)
    write_results(args.out, {"card_budget": "card size less 1 GiB (CUDA context)", "configs": rows})


if __name__ == "__main__":
    main()
