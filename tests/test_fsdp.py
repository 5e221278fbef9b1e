"""``run.strategy: fsdp`` on two gloo CPU ranks: the same losses as DDP, a killed run resumed bit for bit, and a
checkpoint that one process and the converters read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, read_log, stage2_config, write_yaml

from framework.commands.convert import main as convert_main
from framework.commands.train import main as train_main
from framework.core import checkpoint
from framework.core.errors import ConfigError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "framework.train", "--cfg"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}  # the test's cache folder too


def _config(tmp: Path, name: str, strategy: str) -> Path:
    """Tiny stage-2 VQA (ViT blocks, Q-Former layers and OPT decoder layers each an FSDP unit; the OPT
    layers recomputed in backward), gradient accumulation and clipping; a slow image processor (50 ms a sample)
    gives the killed run time to be stopped between checkpoints."""
    cfg = stage2_config(tmp, tmp / name)
    cfg["plugins"] = ["toy_plugins"]
    cfg["model"]["llm"]["frozen_dropout"] = False  # dropout masks drawn per rank: only deterministic runs compare
    cfg["task"] = {"name": "vqa", "metric": "exact", "num_beams": 2, "max_new_tokens": 3}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 64, "val": 6}
    shapes["processors"]["train"]["image"].insert(0, {"name": "slow", "sleep_s": 0.05})
    cfg["datasets"]["shapes_vqa"] = shapes
    cfg["run"] |= {"batch_size": 2, "accum_steps": 2, "max_iters": 6, "checkpoint_every": 2, "log_every": 1,
                   "grad_clip": 1.0, "strategy": strategy, "optimizer": {"lr": 1e-3}}
    return write_yaml(tmp / f"{name}.yaml", cfg)


def _torchrun(cfg: Path, *extra: str) -> None:
    proc = subprocess.run(TORCHRUN + [str(cfg), *extra], cwd=cfg.parent, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _kill_after(cfg: Path, out: Path, iteration: int) -> None:
    """Start the run under torchrun and SIGKILL every process of it once ``iteration`` is logged after a
    checkpoint was written (no clean exit: as a preempted job)."""
    proc = subprocess.Popen(TORCHRUN + [str(cfg)], cwd=cfg.parent, env=_env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        end = time.time() + 300
        while time.time() < end:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            log = out / "log.jsonl"
            if (out / "checkpoints" / "last.pt").exists() and log.exists() and \
                    f'"iter": {iteration},' in log.read_text():
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_fsdp_trains_as_ddp_resumes_bit_for_bit_and_writes_a_plain_checkpoint(tmp_path: Path) -> None:
    ddp, fsdp = _config(tmp_path, "ddp", "ddp"), _config(tmp_path, "fsdp", "fsdp")
    _torchrun(ddp)
    _torchrun(fsdp)
    keys = ["loss", "lr", "grad_norm"]
    la, lb = read_log(tmp_path / "ddp"), read_log(tmp_path / "fsdp")
    assert [r["iter"] for r in lb] == list(range(1, 7))
    for ra, rb in zip(la, lb, strict=True):
        # tolerance: float32 (unit roundoff 6e-8) gradients reduced in another order (a reduce-scatter of shards
        # instead of an all-reduce) over 6 AdamW steps of a loss about 3: far below the 1e-5 asked
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), (rb["iter"], k)
    a = checkpoint.load(tmp_path / "ddp" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "fsdp" / "checkpoints" / "last.pt")
    assert sorted(b["model"]) == sorted(a["model"])  # gathered whole: the trainable weights, no frozen LLM weight
    assert not any(k.startswith(("llm.", "image_encoder.")) for k in b["model"])
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    for i, state in a["optimizer"]["state"].items():  # whole AdamW moments, indexed as DDP's
        for k, v in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][i][k], v, rtol=1e-4, atol=1e-7)
    ea, eb = read_log(tmp_path / "ddp", "eval"), read_log(tmp_path / "fsdp", "eval")
    assert [e["iter"] for e in eb] == [6]  # evaluation (beam search, gathered weights) on both ranks' shares
    assert eb == ea and "shapes_vqa/val/accuracy" in eb[0]
    answers = [json.loads(next((tmp_path / n / "predictions").glob("*.json")).read_text()) for n in ("ddp", "fsdp")]
    assert answers[1] == answers[0] and answers[0]  # each answer, word for word

    # killed between checkpoints and resumed with --resume auto: the uninterrupted FSDP run's numbers, bit for bit
    killed = _config(tmp_path, "killed", "fsdp")
    _kill_after(killed, tmp_path / "killed", 3)
    assert 3 <= max(r["iter"] for r in read_log(tmp_path / "killed")) < 6
    _torchrun(killed, "--resume", "auto")
    lk = read_log(tmp_path / "killed")
    assert [r["iter"] for r in lk] == list(range(1, 7))
    assert [[r[k] for k in keys] for r in lk] == [[r[k] for k in keys] for r in lb]
    c = checkpoint.load(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert all(torch.equal(c["model"][k], b["model"][k]) for k in b["model"])

    # one process reads FSDP's checkpoint: it resumes it as a single-process run, and the converters take it
    cfg = tmp_path / "fsdp.yaml"
    assert train_main(["--cfg", str(cfg), "--resume", "auto", "--options", "run.max_iters=7",
                       "run.strategy=ddp"]) == 0
    assert [r["iter"] for r in read_log(tmp_path / "fsdp")][-1] == 7
    exp = ["--src", str(cfg), "--options", f"model.checkpoint={tmp_path / 'killed' / 'checkpoints' / 'last.pt'}"]
    assert convert_main(["--from", "ours", "--to", "hf", "--out", str(tmp_path / "hf")] + exp) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize("setting, culprit", [
    (["run.strategy=fsdp", "run.amp=bf16"], "run.amp=bf16 with run.strategy=fsdp"),
    (["run.strategy=fsdp", "run.compile=true"], "run.compile with run.strategy=fsdp"),
    (["run.fsdp.sharding=zero3"], "run.fsdp.sharding"),
])
def test_fsdp_settings_it_cannot_take_are_refused_before_any_work(tmp_path: Path, setting, culprit) -> None:
    from framework.engine.experiment import load_experiment
    from framework.engine.runner import Runner

    cfg = _config(tmp_path, "out", "ddp")
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        Runner(load_experiment(str(cfg), setting))
    assert not (tmp_path / "out").exists()
