"""Ablation tables in one command.

    python -m run_scripts.ablate projects/blip2/ablations/<study>.yaml [--only VARIANT ...]

A study (schema: :class:`Study`) names a base experiment, its variants (each a few ``--options``), the seeds,
the metrics to report, and optionally an evaluation to run after each training (zero-shot VQA after stage 2).
Every variant x seed is an ordinary ``framework.train`` run in its own process and folder
(``<output_dir>/<variant>/seed<S>``), one after another, or each under torchrun (``nproc``). A run that finished
(its ``metrics.json`` exists) is not trained again, so rerunning a study resumes it; a run that fails is
marked failed with its error and the others go on. Writes ``table.md``, ``table.csv`` and ``results.json``
(mean and spread over seeds) and, per metric, ``<metric>.png``: the metric against training step per variant.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from framework.core.config import load_config, validate
from framework.core.errors import ConfigError
from framework.core.logs import setup_console


@dataclass
class Evaluation:
    """``evaluate``: an evaluation config run after each training; ``{run}`` in ``options`` is the training's
    output folder (e.g. ``model.checkpoint={run}/checkpoints/best.pt``). Its metrics join the table."""
    cfg: str
    options: List[str] = field(default_factory=list)


@dataclass
class Variant:
    """``variants.<name>``: ``options``, the ``--options`` that make this variant (none: the base as it is);
    ``cfg``, a config to start from instead of the study's base (ViT-L against ViT-g, OPT against FlanT5);
    ``evaluate``, this variant's own evaluation (e.g. another LLM's prompt) instead of the study's."""
    options: List[str] = field(default_factory=list)
    cfg: Optional[str] = None
    evaluate: Optional[Evaluation] = None


@dataclass
class Study:
    """A study file. ``base``: the experiment config every variant starts from (relative to the repository).
    ``metrics``: keys of the runs' evaluation records (``<entry>/<split>/<metric>``, from ``log.jsonl`` — their
    curves are plotted) or of the evaluation's ``metrics.json``. ``output_dir``: where the runs go;
    ``report_dir``: where tables and plots go (default: ``output_dir``). ``nproc``: processes per run (> 1:
    torchrun)."""
    base: str
    variants: Dict[str, Variant]
    metrics: List[str]
    output_dir: str
    report_dir: Optional[str] = None
    seeds: List[int] = field(default_factory=lambda: [0])
    evaluate: Optional[Evaluation] = None
    nproc: int = 1


def load_study(path: str) -> Study:
    raw, origins = load_config(path)
    return validate(raw, Study, origins)


def _launch(module: str, args: List[str], nproc: int) -> List[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                module, *args]
    return [sys.executable, "-m", module, *args]


def _run(cmd: List[str], log: Path) -> Optional[str]:
    """Run ``cmd`` with its output in ``log``; None on success, else the error (its last lines)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    if code == 0:
        return None
    tail = [line for line in log.read_text().splitlines() if line.strip()][-3:]
    return f"exit {code}: " + " | ".join(tail)


def run_one(study: Study, name: str, variant: Variant, seed: int) -> Dict[str, Any]:
    """Train (and evaluate) one variant x seed unless already done; its final metrics and curves."""
    out = Path(study.output_dir) / name / f"seed{seed}"
    record: Dict[str, Any] = {"variant": name, "seed": seed, "run": str(out)}
    if (out / "metrics.json").exists():
        record["skipped"] = True
    else:
        args = ["--cfg", variant.cfg or study.base, "--resume", "auto", "--options", *variant.options, f"run.seed={seed}",
                f"run.output_dir={out}"]
        error = _run(_launch("framework.train", args, study.nproc), out.parent / f"seed{seed}.log")
        if error:
            return record | {"error": error}
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    record["curves"] = {m: [(e["iter"], e[m]) for e in evals if m in e] for m in study.metrics}
    record["metrics"] = {m: c[-1][1] for m, c in record["curves"].items() if c}
    evaluation = variant.evaluate or study.evaluate
    if evaluation:
        ev_out = out / "evaluation"
        if not (ev_out / "metrics.json").exists():
            options = [o.replace("{run}", str(out)) for o in evaluation.options]
            args = ["--cfg", evaluation.cfg, "--options", *options, f"run.output_dir={ev_out}"]
            error = _run(_launch("framework.evaluate", args, study.nproc), out / "evaluation.log")
            if error:
                return record | {"error": error}
        found = json.loads((ev_out / "metrics.json").read_text())["eval"]
        record["metrics"].update({m: found[m] for m in study.metrics if m in found})
    return record


def summarize(study: Study, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per variant: each metric's mean, spread (sample std; 0 for one seed), min, max over seeds; errors."""
    out: Dict[str, Any] = {}
    for name in study.variants:
        mine = [r for r in records if r["variant"] == name]
        errors = [f"seed {r['seed']}: {r['error']}" for r in mine if "error" in r]
        row: Dict[str, Any] = {"seeds": [r["seed"] for r in mine if "error" not in r], "errors": errors}
        for m in study.metrics:
            values = [r["metrics"][m] for r in mine if "error" not in r and m in r.get("metrics", {})]
            if values:
                row[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "min": min(values), "max": max(values), "values": values}
        out[name] = row
    return out


def write_tables(study: Study, summary: Dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = ["variant"] + study.metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    with open(folder / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seeds"] + [f"{m} {s}" for m in study.metrics for s in ("mean", "std")] + ["error"])
        for name, row in summary.items():
            cells = [f"{row[m]['mean']:.4g} ± {row[m]['std']:.2g}" if m in row else "—" for m in study.metrics]
            label = name + (f" ({len(row['errors'])} seed(s) failed)" if row["errors"] and row["seeds"] else "")
            if not row["seeds"]:  # every seed failed: say why instead of numbers
                error = row["errors"][0].replace("|", "/")[:300] if row["errors"] else "not run"
                cells = [f"failed — {error}"] + ["—"] * (len(cells) - 1)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            w.writerow([name, " ".join(map(str, row["seeds"]))]
                       + [x for m in study.metrics for x in ((row[m]["mean"], row[m]["std"]) if m in row else ("", ""))]
                       + ["; ".join(row["errors"])])
    seeds = ", ".join(map(str, study.seeds))
    (folder / "table.md").write_text(f"Study `{study.base}`, seeds {seeds}: mean ± sample std over seeds.\n\n"
                                     + "\n".join(lines) + "\n")


def plot_curves(study: Study, records: List[Dict[str, Any]], folder: Path) -> List[Path]:
    """One PNG per metric with curves: the metric against training step, per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for m in study.metrics:
        curves = {r["variant"]: [] for r in records}
        for r in records:
            if r.get("curves", {}).get(m):
                curves[r["variant"]].append(dict(r["curves"][m]))
        if not any(curves.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in curves.items():
            if not runs:
                continue
            steps = sorted(set.intersection(*(set(c) for c in runs)))
            ax.plot(steps, [statistics.fmean(c[s] for c in runs) for s in steps], marker="o", label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(m)
        ax.legend()
        ax.grid(alpha=0.3)
        path = folder / (m.replace("/", "_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.ablate", description=__doc__.splitlines()[0])
    p.add_argument("study", help="a study YAML, e.g. projects/blip2/ablations/stage1_shapes.yaml")
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT", help="run only these variants")
    args = p.parse_args(argv)
    setup_console()
    try:
        study = load_study(args.study)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = []
    for name, variant in study.variants.items():
        if args.only and name not in args.only:
            continue
        for seed in study.seeds:
            print(f"=== {name}, seed {seed}", flush=True)
            record = run_one(study, name, variant, seed)
            print(f"    {'already done' if record.get('skipped') else record.get('error', 'done')}: "
                  f"{record.get('metrics', {})}", flush=True)
            records.append(record)
    folder = Path(study.report_dir or study.output_dir)
    summary = summarize(study, records)
    write_tables(study, summary, folder)
    (folder / "results.json").write_text(json.dumps({"study": args.study, "seeds": study.seeds, "summary": summary,
                                                      "runs": records}, indent=1) + "\n")
    plots = plot_curves(study, records, folder)
    print((folder / "table.md").read_text())
    print(f"tables and {len(plots)} plot(s) in {folder}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
