"""``make demo``: train the CPU-sized models on the generated shapes set and print their metrics.

Each step is an ordinary ``python -m framework.train`` run; rerunning the demo resumes finished runs from
their last checkpoint instead of training again.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Tuple

from framework.cli import load_experiment
from framework.train import main as train_main

STEPS: List[Tuple[str, str]] = [
    ("retrieval baseline: conv stem + bag-of-words dual encoder, ITC", "projects/blip2/demo/dual_encoder_shapes.yaml"),
]


def main() -> int:
    rows = []
    for title, cfg in STEPS:
        print(f"\n=== {title}\n    python -m framework.train --cfg {cfg} --resume auto", flush=True)
        t0 = time.time()
        if train_main(["--cfg", cfg, "--resume", "auto"]) != 0:
            return 1
        out = Path(load_experiment(cfg).run.output_dir)
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append((title, time.time() - t0, metrics.get("test", {}), out))
    print("\n=== results (test split)")
    for title, seconds, metrics, out in rows:
        print(f"{title}  [{seconds:.0f} s, outputs in {out}]")
        for k, v in metrics.items():
            print(f"    {k:45s} {v:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
