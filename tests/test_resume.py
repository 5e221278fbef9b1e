"""Checkpoints: exact resume after a kill, atomic writes, and mismatched weights named."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, read_log, toy_config, write_yaml

from framework.commands.train import main as train_main
from framework.core import checkpoint
from framework.core.errors import CheckpointError


def _wait_for(out: Path, min_iter: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    log = out / "log.jsonl"
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if log.exists() and (out / "checkpoints" / "last.pt").exists():
            lines = log.read_text().splitlines()
            if lines and f'"iter": {min_iter},' in lines[-1]:
                return
        time.sleep(0.02)
    raise TimeoutError("the run to be killed did not reach the iteration")


@pytest.mark.slow
def test_killed_run_resumed_with_auto_logs_exactly_the_same_losses(tmp_path: Path) -> None:
    run = {"max_iters": 14, "checkpoint_every": 3, "eval_every": 5, "grad_clip": 1.0}
    ref = toy_config(tmp_path / "ref", **run)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "ref.yaml", ref))]) == 0

    killed = toy_config(tmp_path / "killed", **run)
    path = write_yaml(tmp_path / "killed.yaml", killed)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.Popen([sys.executable, "-m", "framework.train", "--cfg", str(path),
                             "--options", "model.sleep_s=0.3"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "killed", 8, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    logged_before = [r["iter"] for r in read_log(tmp_path / "killed")]
    assert 8 <= max(logged_before) < 14  # really stopped mid-run
    assert train_main(["--cfg", str(path), "--resume", "auto", "--options", "model.sleep_s=0.3"]) == 0

    ref_log, resumed_log = read_log(tmp_path / "ref"), read_log(tmp_path / "killed")
    assert [r["iter"] for r in resumed_log] == list(range(1, 15))
    keys = ["loss", "loss_words", "loss_l2", "lr", "grad_norm", "epoch"]
    assert [[r[k] for k in keys] for r in resumed_log] == [[r[k] for k in keys] for r in ref_log]  # bit for bit
    assert read_log(tmp_path / "killed", "eval") == read_log(tmp_path / "ref", "eval")
    a = checkpoint.load(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crash_during_checkpoint_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "iter": 1, "w": torch.ones(3)}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted in the middle of the write

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "iter": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["iter"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_checkpoint_of_another_model_names_the_keys(tmp_path: Path) -> None:
    out = tmp_path / "a"
    cfg = toy_config(out, max_iters=1)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "a.yaml", cfg))]) == 0
    other = toy_config(tmp_path / "b", max_iters=1)
    other["model"]["image_encoder"]["width"] = 8
    other["model"]["checkpoint"] = str(out / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as e:
        from framework.engine.experiment import load_experiment
        from framework.engine.runner import Runner

        Runner(load_experiment(str(write_yaml(tmp_path / "b.yaml", other))))
    msg = str(e.value)
    assert "keys with another shape" in msg and "image_encoder.body.0.weight (checkpoint (16, 3, 3, 3), model (8, 3, 3, 3))" in msg
    assert not (tmp_path / "b").exists()


def test_only_trainable_and_non_frozen_weights_are_saved() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    keys = set(checkpoint.trainable_state_dict(model))
    assert keys == {"2.weight", "2.bias"}  # the frozen batch norm's running stats are not saved either


def test_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match=r"x.pt is not a checkpoint of this framework"):
        checkpoint.load(bad)
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"y.pt cannot be read"):
        checkpoint.load(tmp_path / "y.pt")


def test_resume_from_another_models_checkpoint_fails_before_writing(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "a", max_iters=1)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "a.yaml", cfg))]) == 0
    other = toy_config(tmp_path / "b", max_iters=1)
    other["model"]["vocab"] = 32
    code = train_main(["--cfg", str(write_yaml(tmp_path / "b.yaml", other)),
                       "--resume", str(tmp_path / "a" / "checkpoints" / "last.pt")])
    assert code == 2
    assert "head.weight (checkpoint (64, 16), model (32, 16))" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_frozen_parts_stay_in_eval_mode_and_out_of_the_checkpoint(tmp_path: Path) -> None:
    from framework.engine.experiment import load_experiment
    from framework.engine.runner import Runner

    cfg = toy_config(tmp_path / "out", max_iters=2)
    cfg["model"]["freeze_encoder"] = True
    runner = Runner(load_experiment(str(write_yaml(tmp_path / "e.yaml", cfg))))
    runner.train()
    # training steps: encoder in eval mode, head training; evaluation: both in eval mode
    assert runner.model.modes_seen == {(False, True), (False, False)}
    saved = checkpoint.load(tmp_path / "out" / "checkpoints" / "last.pt")["model"]
    assert not any(k.startswith("image_encoder.") for k in saved) and "head.weight" in saved


def test_an_output_dir_holding_another_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path, capsys,
                                                                                    caplog) -> None:
    out = tmp_path / "out"
    first = write_yaml(tmp_path / "a.yaml", toy_config(out, max_iters=3))
    assert train_main(["--cfg", str(first)]) == 0
    before = {p: p.read_bytes() for p in (out / "config.yaml", out / "log.jsonl", out / "checkpoints" / "last.pt")}
    capsys.readouterr()

    assert train_main(["--cfg", str(first)]) == 2  # the same config again, without --resume
    assert "holds another run (config.yaml, log.jsonl, train.log, metrics.json, checkpoints)" in capsys.readouterr().err
    other = write_yaml(tmp_path / "b.yaml", toy_config(out, max_iters=3, seed=5))
    assert train_main(["--cfg", str(other), "--resume", "auto"]) == 2  # another experiment cannot continue it
    assert "holds a run of another config (run.seed: 42 -> 5)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before  # nothing of the first run touched

    longer = write_yaml(tmp_path / "c.yaml", toy_config(out, max_iters=5))  # continuing it longer is fine
    with caplog.at_level("INFO", logger="framework"):
        assert train_main(["--cfg", str(longer), "--resume", "auto"]) == 0
    assert "last.pt: run.max_iters was 3, is 5" in caplog.text  # what changed since the checkpoint, logged
    assert [r["iter"] for r in read_log(out)] == [1, 2, 3, 4, 5]

    assert train_main(["--cfg", str(other), "--overwrite"]) == 0  # replaced: none of the first run's records left
    assert [r["iter"] for r in read_log(out)] == [1, 2, 3]
    assert "seed: 5" in (out / "config.yaml").read_text()


def test_leftovers_of_a_killed_run_are_cleaned_on_resume(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    path = write_yaml(tmp_path / "c.yaml", toy_config(out, max_iters=4, checkpoint_every=2))
    assert train_main(["--cfg", str(path)]) == 0
    full = read_log(out)
    # a run killed before its first checkpoint: its config, records and a half-written checkpoint remain
    for p in (out / "checkpoints" / "last.pt", out / "metrics.json"):
        p.unlink()
    (out / "checkpoints" / ".last.pt.99999.tmp").write_bytes(b"PK half")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"event": "train", "iter": 3, "lo')  # torn by the kill
    with caplog.at_level("INFO", logger="framework"):
        assert train_main(["--cfg", str(path), "--resume", "auto"]) == 0
    keys = ["iter", "loss", "lr"]
    assert [[r[k] for k in keys] for r in read_log(out)] == [[r[k] for k in keys] for r in full]  # each iteration once
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temporary file
    assert "removed 1 temporary checkpoint file(s) of a killed process: .last.pt.99999.tmp" in caplog.text


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    path = write_yaml(tmp_path / "c.yaml", toy_config(out, max_iters=4, checkpoint_every=2))
    assert train_main(["--cfg", str(path), "--options", "run.max_iters=2"]) == 0
    with open(out / "log.jsonl", "a") as f:
        f.write('{"event": "train", "iter": 3, "lo')
    with caplog.at_level("WARNING", logger="framework"):
        assert train_main(["--cfg", str(path), "--resume", "auto"]) == 0
    assert "log.jsonl line 4 is not a log record (torn by a kill during a write?): dropped" in caplog.text
    assert [r["iter"] for r in read_log(out)] == [1, 2, 3, 4]
