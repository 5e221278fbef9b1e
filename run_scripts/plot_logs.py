"""``python -m run_scripts.plot_logs --runs NAME=RUN_DIR ... --keys loss_itc loss_itg --out curves.png``: the
curves of several runs' ``log.jsonl`` side by side, one panel per key (a training loss term, or an evaluation
metric such as ``shapes_retrieval/val/txt_r1``), for a diagnosis a person reads at a glance."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple


def curves(run: Path, key: str) -> Tuple[List[int], List[float]]:
    """(iterations, values) of ``key`` in the run's log records that hold it."""
    xs, ys = [], []
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            xs.append(record["iter"])
            ys.append(record[key])
    return xs, ys


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.plot_logs", description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR")
    p.add_argument("--keys", nargs="+", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: Dict[str, Path] = dict((n, Path(d)) for n, d in (r.split("=", 1) for r in args.runs))
    fig, axes = plt.subplots(1, len(args.keys), figsize=(5 * len(args.keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], args.keys):
        for name, run in runs.items():
            xs, ys = curves(run, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 8 else None, label=name)
        ax.set_title(key.split("/")[-1] if "/" in key else key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
