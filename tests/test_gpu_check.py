"""``benchmarks/gpu_check.sh`` is run where a GPU is lent; its Python part (``benchmarks/gpu_check.py``) runs here
on the CPU at tiny sizes, so that the script a GPU session runs is known to work: random weights materialised
from the meta device, timed steps per variant, the estimate beside them, the quantised variants skipped with the
reason where bitsandbytes cannot run."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from helpers import REPO, stage2_config, write_yaml

sys.path.insert(0, str(REPO))
from benchmarks.gpu_check import main as gpu_check_main  # noqa: E402


def test_the_gpu_check_measures_each_variant_on_the_cpu(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "tiny.yaml", stage2_config(tmp_path, tmp_path / "out", "opt"))
    out = tmp_path / "gpu_check.json"
    assert gpu_check_main(["--device", "cpu", "--configs", str(cfg), "--variants", "config", "lora", "int8", "fsdp",
                           "--steps", "2", "--batch-size", "2", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    for variant in ("config", "lora"):
        r = runs[f"tiny/{variant}"]
        assert r["samples_per_second"] > 0 and math.isfinite(r["loss"]) and r["estimated_peak_gib"] > 0
        assert r["peak_gib"] is None  # measured on CUDA only
    assert runs["tiny/lora"]["estimated_peak_gib"] != runs["tiny/config"]["estimated_peak_gib"]  # the adapters
    if not torch.cuda.is_available():
        assert runs["tiny/int8"] == {"skipped": "int8 / nf4 need a CUDA GPU and bitsandbytes"}
    assert runs["tiny/fsdp"]["skipped"].startswith("fsdp shards over processes: run under torchrun")


def test_the_gpu_script_says_it_needs_a_gpu_where_there_is_none() -> None:
    if torch.cuda.is_available():
        return  # a GPU machine: the script runs for real (too long for the suite)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "no CUDA GPU here: this check is for a GPU machine" in proc.stderr
