"""Activation checkpointing (``model.image_encoder.grad_checkpointing``, ``model.qformer.grad_checkpointing``):
peak memory and step time with and without, measured on the CPU, and the estimate of the paper's fine-tuning
config.

    python benchmarks/grad_checkpointing.py [--out benchmarks/results/grad_checkpointing_cpu.json]

Measured: caption fine-tuning at a CPU size (the ViT trained, as the paper fine-tunes it: EVA-style, 384 wide,
6 blocks, 112 px with patch 8 = 197 tokens; a 4-layer 384-wide Q-Former; a tiny OPT made here), batch 16, fp32,
each setting in a fresh process (``benchmarks/peak_memory.py``), the same seed: the losses must be equal.
Estimated (``framework.engine.cost``, as ``--dry-run`` prints it): ``projects/blip2/finetune/caption_coco_opt2.7b.yaml``
(EVA ViT-g at 364 px, trained) at its batch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.output import write_results  # noqa: E402
from benchmarks.peak_memory import run_child  # noqa: E402
from framework.engine.cost import step_cost  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402

SETTINGS = {"neither": (False, False), "vit": (True, False), "qformer": (False, True), "both": (True, True)}


def _config(work: Path) -> Path:
    import yaml
    from helpers import stage2_config
    from tiny_bert import make_tiny_bert, vocab_size

    bert = make_tiny_bert(work / "bert", hidden=384, layers=4, heads=6, intermediate=1536)
    cfg = stage2_config(work, work / "out")
    model = cfg["model"]
    model["image_encoder"].update(image_size=112, width=384, depth=6, heads=6, mlp_dim=1536, freeze=False)
    model["qformer"].update(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536, bert=str(bert),
                            vocab_size=vocab_size(bert), num_query_tokens=32)
    cfg["run"]["batch_size"] = 16
    path = work / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _options(vit: bool, qformer: bool):
    return [f"model.image_encoder.grad_checkpointing={str(vit).lower()}",
            f"model.qformer.grad_checkpointing={str(qformer).lower()}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/grad_checkpointing_cpu.json")
    args = p.parse_args()
    cfg = _config(Path(tempfile.mkdtemp(prefix="ckpt-")))
    measured = {}
    for name, (vit, qformer) in SETTINGS.items():
        options = _options(vit, qformer)
        run = run_child(str(cfg), 16, options)
        estimate = step_cost(load_experiment(str(cfg), options))
        measured[name] = {"peak_mib": run["peak_bytes"] / 2 ** 20,
                          "estimated_peak_mib": estimate.peak_bytes / 2 ** 20,
                          "step_seconds": run["step_seconds"], "losses": run["losses"]}
        print(f"{name:8s} peak {measured[name]['peak_mib']:7.0f} MiB "
              f"(estimated {measured[name]['estimated_peak_mib']:7.0f})   step {run['step_seconds']:.2f} s   "
              f"losses {run['losses']}", flush=True)
    base = measured["neither"]
    for row in measured.values():
        row["peak_ratio"] = row["peak_mib"] / base["peak_mib"]
        row["time_ratio"] = row["step_seconds"] / base["step_seconds"]
        row["same_losses"] = row["losses"] == base["losses"]
    real = REPO / "projects" / "blip2" / "finetune" / "caption_coco_opt2.7b.yaml"
    estimated = {}
    for name in ("neither", "both"):
        cost = step_cost(load_experiment(str(real), _options(*SETTINGS[name])))
        estimated[name] = cost.report()
        print(f"caption_coco_opt2.7b {name:8s} {estimated[name]}", flush=True)
    write_results(args.out, {"measured_cpu": measured, "estimated_caption_coco_opt2.7b": estimated})


if __name__ == "__main__":
    main()
