"""Real training steps of the paper's configs per memory strategy, against ``--dry-run``'s estimate: samples/s and
peak memory, JSON.

    bash benchmarks/gpu_check.sh                      # where a CUDA GPU is (nothing is downloaded)
    python benchmarks/gpu_check.py --device cpu --configs X.yaml --steps 2   # the CPU smoke (tests/test_benchmarks.py)

The weights are random: each model is built on the meta device as ``--dry-run`` builds it, then materialised on
the device (random values, position ids counted, a stand-in tokenizer that makes every text ``max_txt_len``
tokens), so a real-size step runs without the real weight files. Variants (``--variants``): ``config`` (as the
config says), ``lora`` (``model.llm.lora`` rank 8), ``int8`` and ``nf4`` (``model.llm.precision``: bitsandbytes,
CUDA only; elsewhere recorded as skipped, with the reason), ``fsdp`` (``run.strategy: fsdp``, bf16, full sharding:
under torchrun only, ``NPROC=8 bash benchmarks/gpu_check.sh``; the estimate then shards over the same processes).
Peak memory is ``torch.cuda.max_memory_allocated`` (none on a CPU); the estimate is ``framework.engine.cost``'s at
the same batch.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.output import write_results  # noqa: E402
from framework.core import dist  # noqa: E402
from framework.core.registry import build  # noqa: E402
from framework.engine import fsdp  # noqa: E402
from framework.engine.cost import GB, _stand_in_tokenizer, step_cost  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402
from framework.engine.optim import build_optimizer  # noqa: E402
from framework.models.build import build_model  # noqa: E402

VARIANTS = {"config": [], "lora": ["model.llm.lora={r: 8}"], "int8": ["model.llm.precision=int8"],
            "nf4": ["model.llm.precision=nf4"],
            "fsdp": ["run.strategy=fsdp", "run.amp='off'", "run.fsdp.mixed_precision=bf16"]}
QUANTISED = ("int8", "nf4")


def skipped(variant: str, device: str, has_llm: bool) -> str:
    """Why ``variant`` cannot run here ("" if it can)."""
    if variant != "config" and not has_llm:
        return "a stage-1 config has no LLM"
    if variant in QUANTISED and not (device == "cuda" and importlib.util.find_spec("bitsandbytes")):
        return "int8 / nf4 need a CUDA GPU and bitsandbytes"
    if variant == "fsdp" and dist.world_size() < 2:
        return "fsdp shards over processes: run under torchrun (NPROC=8 bash benchmarks/gpu_check.sh)"
    return ""


def materialise(exp, device: str) -> nn.Module:
    """The experiment's model built on meta, then on ``device`` with random weights (the frozen parts in their
    precision), integer position buffers counted, and the stand-in tokenizer of the dry run."""
    with torch.device("meta"):
        model = build_model(exp.model)
    text_tokens = max(1, getattr(model, "max_txt_len", 32) - 2)
    model.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point():
                t.copy_((torch.randn(t.shape, generator=g) * 0.02).to(t.dtype))
            else:  # position ids: 0, 1, 2, ... along the last dimension
                t.copy_(torch.arange(t.shape[-1]).expand(t.shape).to(t.dtype))
    tokenizer = _stand_in_tokenizer(text_tokens)
    for module in model.modules():
        if "tokenizer" in vars(module) and module.tokenizer is None:
            module.tokenizer = tokenizer
        if "eot_id" in vars(module) and module.eot_id is None:
            module.eot_id, module.end_of_text = tokenizer.eos_token_id, tokenizer.eos_token
    return model


def _on(batch: Dict[str, Any], device: str) -> Dict[str, Any]:
    """The example batch on ``device``, its images (``torch.empty`` for the estimate) drawn at random."""
    g = torch.Generator().manual_seed(1)
    return {k: ((torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v).to(device)
                if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def measure(cfg: str, options: List[str], device: str, steps: int, batch_size: int) -> Dict[str, Any]:
    """``steps`` timed training steps (after one untimed) of ``cfg`` at ``batch_size``, and the estimate."""
    exp = load_experiment(cfg, options)
    estimate = step_cost(exp, batch_size).report()
    model = materialise(exp, device)
    if exp.run.strategy == "fsdp":
        fsdp.shard(model, exp.run.fsdp, torch.device(device))
    task = build("task", exp.task)
    optimizer = build_optimizer(model, exp.run.optimizer)
    text_tokens = max(1, getattr(model, "max_txt_len", 32) - 2)
    batch = _on(task.example_batch(model, batch_size, text_tokens), device)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(fsdp.autocast_precision(exp.run))
    on = amp is not None and (device == "cuda" or amp == torch.bfloat16)  # FSDP's bf16 gathers need it on CPU too
    autocast = (lambda: torch.autocast(device, dtype=amp)) if on else nullcontext
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast():
            loss = task.train_step(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step allocates the optimizer state and warms the kernels
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / GB if device == "cuda" else None
    return {"batch": batch_size, "loss": float(loss.detach()), "samples_per_second": batch_size / seconds,
            "seconds_per_step": seconds, "peak_gib": peak, "estimated_peak_gib": estimate["peak_gib"],
            "estimated_tflops": estimate["tflops"]}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[str(REPO / "projects" / "blip2" / f"{c}.yaml") for c in
                                                    ("stage1_vitg", "stage2_opt2.7b", "stage2_flant5xl")])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8, help="per step (real-size steps: 8 fits every variant)")
    p.add_argument("--options", nargs="*", default=[], help="config overrides for every run (KEY=VALUE)")
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = p.parse_args(argv)
    dist.init(torch.device(args.device))  # under torchrun (the fsdp variant): every rank runs every step
    rows: Dict[str, Dict[str, Any]] = {}
    for cfg in args.configs:
        has_llm = "llm" in load_experiment(cfg, args.options).model
        for variant in args.variants:
            key = f"{Path(cfg).stem}/{variant}"
            why = skipped(variant, args.device, has_llm)
            if why:
                rows[key] = {"skipped": why}
            else:
                rows[key] = measure(cfg, args.options + VARIANTS[variant], args.device, args.steps, args.batch_size)
            if dist.is_main():
                print(key, rows[key], flush=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if dist.is_main():
        write_results(args.out, {"device": name, "processes": dist.world_size(), "steps": args.steps, "runs": rows})
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
