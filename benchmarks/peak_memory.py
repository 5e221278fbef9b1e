"""Measured peak memory of training iterations on the CPU, beside ``framework.engine.cost``'s estimate.

    python benchmarks/peak_memory.py --cfg CONFIG [--batch N] [--options KEY=VALUE ...]

Each measurement runs in a fresh process: the resident set size before the model is built is subtracted from the
process's peak (``ru_maxrss``) after two training iterations (forward, backward, AdamW's step) on the batch
``framework.engine.cost`` estimates for (texts of ``max_txt_len`` tokens). glibc's allocator is told to map every
block of 64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the resident set at
once, as it leaves a GPU's allocated memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]


def measure(cfg: str, batch: int, options: Sequence[str] = ()) -> int:
    """Peak bytes of two training iterations of ``cfg`` at ``batch``, measured in a fresh process."""
    return run_child(cfg, batch, options)["peak_bytes"]


def run_child(cfg: str, batch: int, options: Sequence[str] = ()) -> Dict[str, Any]:
    """:func:`measure` with the second iteration's seconds and the losses of both."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", "--cfg", cfg, "--batch", str(batch), "--options",
                           *options], env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"measuring {cfg} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(cfg: str, batch_size: int, options: List[str]) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from framework.core.registry import build
    from framework.engine.experiment import load_experiment
    from framework.engine.optim import build_optimizer
    from framework.models.build import build_model

    exp = load_experiment(cfg, options)
    task = build("task", exp.task)
    torch.manual_seed(0)
    # the math libraries' own start-up memory (thread pools, kernel caches) is the process's, not the step's
    x = torch.randn(256, 256, requires_grad=True)
    torch.nn.functional.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None]).sum().backward()
    del x
    base = _resident()
    model = build_model(exp.model)
    size = model.image_encoder.image_size
    # the estimate's batch: texts of max_txt_len tokens ([CLS] + words + [SEP]; "red" is one token in the tests'
    # tokenizers and in BERT's)
    text = " ".join(["red"] * (model.max_txt_len - 2))
    batch = {"image": torch.randn(batch_size, 3, size, size), "text_input": [text] * batch_size,
             "prompt": [""] * batch_size, "image_id": torch.arange(batch_size)}
    model.train()
    optimizer = build_optimizer(model, exp.run.optimizer)
    losses, seconds = [], 0.0
    for _ in range(2):
        torch.manual_seed(1)  # the same dropout masks and ITM negatives whatever the memory settings
        start = time.perf_counter()
        loss = task.train_step(model, batch)["loss"]
        loss.backward()
        losses.append(float(loss.detach()))
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_bytes": peak, "step_seconds": seconds, "losses": losses}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True)
    p.add_argument("--batch", type=int)
    p.add_argument("--options", nargs="*", default=[])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args.cfg, args.batch, args.options)
    sys.path.insert(0, str(REPO))
    from framework.engine.cost import step_cost
    from framework.engine.experiment import load_experiment

    exp = load_experiment(args.cfg, args.options)
    batch = args.batch or exp.run.batch_size
    estimate = step_cost(exp, batch)
    measured = measure(args.cfg, batch, args.options)
    print(json.dumps({"cfg": args.cfg, "batch": batch, "estimated_peak_bytes": estimate.peak_bytes,
                      "measured_peak_bytes": measured, "ratio": estimate.peak_bytes / measured}))


if __name__ == "__main__":
    main()
