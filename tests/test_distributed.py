"""Two processes under torchrun (gloo) train to the same weights as one process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, read_log, toy_config, write_yaml

from framework.core import checkpoint


def _run(cmd, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    # dropout off: each rank draws its own masks, so only the deterministic model is comparable
    base = dict(max_iters=6, accum_steps=1, grad_clip=1.0, eval_every=3)
    one = toy_config(tmp_path / "one", batch_size=8, **base)
    two = toy_config(tmp_path / "two", batch_size=4, **base)
    for cfg in (one, two):
        cfg["model"]["dropout"] = 0.0
    _run([sys.executable, "-m", "framework.train", "--cfg", str(write_yaml(tmp_path / "one.yaml", one))], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
          "framework.train", "--cfg", str(write_yaml(tmp_path / "two.yaml", two))], tmp_path)

    a = checkpoint.load(tmp_path / "one" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "two" / "checkpoints" / "last.pt")
    assert len(b["rng"]) == 2  # every rank's generator state is kept
    for k in a["model"]:
        # tolerance: float32 sums in another order (two half batches, then the all-reduce)
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    la, lb = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    for ra, rb in zip(la, lb, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)  # losses are averaged over ranks
    ea, eb = read_log(tmp_path / "one", "eval"), read_log(tmp_path / "two", "eval")
    assert [e["iter"] for e in eb] == [3, 6]
    for x, y in zip(ea, eb, strict=True):  # evaluation metrics are gathered over both ranks' shares
        assert y["shapes_caption/val/loss"] == pytest.approx(x["shapes_caption/val/loss"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoints", "config.yaml", "log.jsonl", "metrics.json", "train.log"]  # written once, by rank 0


@pytest.mark.slow
def test_retrieval_reranking_split_over_two_ranks_gives_the_one_process_metrics(tmp_path: Path) -> None:
    import json

    from helpers import stage1_config

    train = stage1_config(tmp_path, tmp_path / "s1", max_iters=3)
    _run([sys.executable, "-m", "framework.train", "--cfg", str(write_yaml(tmp_path / "s1.yaml", train))], tmp_path)
    metrics = {}
    for name, launch in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        cfg = stage1_config(tmp_path, tmp_path / name)
        cfg["model"]["checkpoint"] = str(tmp_path / "s1" / "checkpoints" / "last.pt")
        cfg["task"] = {"name": "retrieval", "k_test": 5, "itm_batch_size": 3, "chunk_size": 7}
        cmd = [sys.executable] + (launch or []) + ["-m", "framework.evaluate", "--cfg",
                                                   str(write_yaml(tmp_path / f"{name}.yaml", cfg))]
        _run(cmd, tmp_path)
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())["eval"]
    assert {"shapes_retrieval/val/txt_r1", "shapes_retrieval/val/itc_txt_r1"} <= set(metrics["one"])
    assert metrics["two"] == pytest.approx(metrics["one"], rel=1e-6)


@pytest.mark.slow
def test_the_torchrun_launch_script_trains_on_two_processes(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "toy.yaml", toy_config(tmp_path / "out", max_iters=2))
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", "NPROC": "2",
           "PYTHON": sys.executable}
    proc = subprocess.run([str(REPO / "run_scripts" / "torchrun.sh"), "train", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = checkpoint.load(tmp_path / "out" / "checkpoints" / "last.pt")
    assert ckpt["iter"] == 2 and len(ckpt["rng"]) == 2  # two ranks
    bad = subprocess.run([str(REPO / "run_scripts" / "torchrun.sh"), "fit", str(cfg)], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Launch a training or evaluation config" in bad.stderr


@pytest.mark.slow
def test_a_stopped_rank_makes_the_other_exit_within_the_timeout(tmp_path: Path) -> None:
    import socket
    import time

    cfg = toy_config(tmp_path / "out", max_iters=50, dist_timeout_s=4, batch_size=4)
    cfg["model"] |= {"dropout": 0.0, "stop_rank_at_step": [1, 3]}  # rank 1 stops itself (SIGSTOP) at step 3
    path = write_yaml(tmp_path / "c.yaml", cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):  # torchrun's environment, without torchrun: the test sees each rank's exit itself
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "framework.train", "--cfg", str(path)], cwd=tmp_path,
                                      env=env, stderr=subprocess.PIPE, text=True))
    try:
        end = time.time() + 180
        while time.time() < end:  # wait for rank 1 to be stopped ('T' in /proc/<pid>/stat)
            stat = Path(f"/proc/{procs[1].pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "T":
                break
            assert procs[1].poll() is None, procs[1].stderr.read()[-2000:]
            time.sleep(0.05)
        stopped_at = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - stopped_at
    finally:
        for p in procs:
            p.kill()
            p.wait()
    err = procs[0].stderr.read()
    assert code == 3, err[-3000:]
    assert "error: rank 0 waited more than run.dist_timeout_s=4 s for another rank" in err and "Traceback" not in err
    assert waited < 4 + 20  # the timeout, plus the step in flight and the process's exit (not torch's 30 minutes)
    assert err.count("INFO model toy_captioner") == 1  # one console line per event (rank 1 prints none of it)


@pytest.mark.slow
def test_two_gloo_ranks_keep_the_frozen_llm_dropout(tmp_path: Path) -> None:
    from helpers import probe_config

    cfg = probe_config(tmp_path, tmp_path / "two", True, max_iters=2, eval_splits=[])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
          "framework.train", "--cfg", str(cfg)], tmp_path)
    assert [r["second_pass_differs"] for r in read_log(tmp_path / "two")] == [1.0, 1.0]  # mean over both ranks
