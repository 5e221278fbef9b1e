"""What an iteration of each real-size config costs, estimated as ``--dry-run`` does (``framework.engine.cost``), with the
time the estimate takes; JSON and the tables of docs/benchmarks.md and the README. For the stage-2 configs also with
the frozen LLM stored in int8 or nf4 (``model.llm.precision``) and with LoRA on it (``model.llm.lora``, rank 8); for
every config under FSDP (full sharding over 8 GPUs, bf16, the LLM's layers recomputed), alone and with LoRA.

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

# the memory variants of a config: --options for each (those naming model.llm for stage-2 configs only); fsdp: full
# sharding over 8 GPUs (framework.engine.cost.FSDP_RANKS), bf16, the LLM's layers recomputed
FSDP = ["run.strategy=fsdp", "run.amp='off'", "run.fsdp.mixed_precision=bf16"]
VARIANTS = {"fsdp": FSDP, "lora": ["model.llm.lora={r: 8}"], "int8": ["model.llm.precision=int8"],
            "nf4": ["model.llm.precision=nf4"], "nf4+lora": ["model.llm.precision=nf4", "model.llm.lora={r: 8}"],
            "fsdp+lora": FSDP + ["model.llm.lora={r: 8}"]}
CONFIGS = ["stage1_vitg", "stage1_vitl", "stage2_vitl_opt2.7b", "stage2_opt2.7b", "stage2_opt6.7b",
           "stage2_vitl_flant5xl", "stage2_flant5xl", "stage2_flant5xxl"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/dry_run_cost.json")
    args = p.parse_args()
    rows, variants = {}, {}
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
              f"{r['largest_batch_24gb']} | {r['largest_batch_40gb']} | {r['largest_batch_80gb']} | {seconds:.1f} s |",
              flush=True)
        variants[name] = {v: step_cost(load_experiment(str(REPO / "projects" / "blip2" / f"{name}.yaml"),
                                                       options)).report()
                          for v, options in VARIANTS.items() if "llm" in exp.model or not _names_llm(options)}
    print("\n| config | " + " | ".join(["as configured", *VARIANTS]) + " |")
    for name, by in variants.items():
        cells = [rows[name]] + [by.get(v) for v in VARIANTS]
        print(f"| `{name}` | " + " | ".join("-" if c is None else f"{c['peak_gib']:.1f} GiB; "
                                            f"{c['largest_batch_24gb']} / {c['largest_batch_40gb']} / "
                                            f"{c['largest_batch_80gb']}" for c in cells) + " |", flush=True)
    write_results(args.out, {"card_budget": "card size less 1 GiB (CUDA context)", "configs": rows,
                             "variants": variants, "variant_options": VARIANTS})


def _names_llm(options: list) -> bool:
    return any(o.startswith("model.llm.") for o in options)


if __name__ == "__main__":
    main()
