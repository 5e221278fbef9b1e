"""``make demo``: train the CPU-sized models on the generated shapes set and print their metrics.

1. the unimodal image encoder: a tiny ViT learns what is in each column of the shapes images, then is frozen;
2. stage 1: the Q-Former, from MiniLM's BERT weights, learns ITC + ITM + ITG from the frozen encoder;
3. a no-Q-Former baseline: a small dual encoder trained with ITC alone.

Each step is an ordinary ``python -m framework.train`` run; rerunning the demo resumes finished runs from
their last checkpoint instead of training again.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from framework.cli import load_experiment
from framework.train import main as train_main

STEPS: List[Tuple[str, str]] = [
    ("frozen image encoder: tiny ViT pretrained on the shapes' attributes", "projects/blip2/demo/vit_shapes.yaml"),
    ("stage 1: Q-Former (MiniLM init) with ITC + ITM + ITG", "projects/blip2/demo/stage1_shapes.yaml"),
    ("baseline: conv encoder + bag-of-words dual encoder, ITC only", "projects/blip2/demo/dual_encoder_shapes.yaml"),
]
RETRIEVAL = [("txt_r1", "image->text R@1"), ("txt_r5", "image->text R@5"), ("img_r1", "text->image R@1"),
             ("img_r5", "text->image R@5")]


def last_validation(out: Path) -> Dict[str, float]:
    """The metrics of the run's last evaluation of its validation split."""
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    evals = [e for e in evals if any("/val/" in k for k in e)]
    return {k.split("/")[-1]: v for k, v in evals[-1].items() if "/val/" in k} if evals else {}


def report(title: str, seconds: float, out: Path, metrics: Dict[str, float]) -> None:
    print(f"\n{title}\n  {seconds:.0f} s, outputs in {out}")
    if "txt_r1" in metrics:
        print(f"  {'validation':22s} {'value':>7s} {'chance':>7s}")
        for key, name in RETRIEVAL:
            print(f"  {name:22s} {metrics[key]:7.2f} {metrics['chance_' + key]:7.2f}")
    else:
        for key, value in metrics.items():
            print(f"  {key:22s} {value:7.2f}")


def main() -> int:
    rows = []
    for title, cfg in STEPS:
        print(f"\n=== {title}\n    python -m framework.train --cfg {cfg} --resume auto", flush=True)
        t0 = time.time()
        if train_main(["--cfg", cfg, "--resume", "auto"]) != 0:
            return 1
        out = Path(load_experiment(cfg).run.output_dir)
        rows.append((title, time.time() - t0, out, last_validation(out)))
    print("\n=== results on the validation split")
    for row in rows:
        report(*row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
