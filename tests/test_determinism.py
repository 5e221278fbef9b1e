"""Runs repeat: the same config and seed give the same losses bit for bit, whatever the thread count (CI runs the
suite with 1 and with 2 threads). These compare identical computations, so they assert exact equality."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import stage1_config, write_yaml

from framework.commands.train import main as train_main
from framework.core.logs import TIMING_KEYS
from framework.data.loader import train_loader
from framework.engine.experiment import load_experiment
from framework.engine.experiment_data import builders
from framework.engine.machine import mkl_reproducible
from framework.engine.runner import Runner
from framework.models.build import build_model


@pytest.fixture
def nondeterministic_kernels_allowed():
    """The code must repeat by itself, not only because a run turned torch's deterministic mode on earlier in
    this process."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(was)


def test_stage1_forward_backward_repeats_bit_for_bit(tmp_path: Path, monkeypatch,
                                                     nondeterministic_kernels_allowed) -> None:
    import plugins.models.blip2_qformer as blip2_qformer

    # every text draws image 0 as its hard negative: the gradients of 24 copies of one image's tokens meet in one
    # place. Gathered by plain indexing, its backward (an accumulating index_put_) added them with racing atomic
    # adds on several threads: 181 different results in 200 repeats of the kernel alone at 2 threads.
    monkeypatch.setattr(blip2_qformer, "sample_hard_negatives", lambda sim, *ids: torch.zeros(len(sim), dtype=torch.long))
    cfg = stage1_config(tmp_path, tmp_path / "out", batch_size=24)
    cfg["model"]["image_encoder"] |= {"image_size": 64, "width": 96}  # 24 x 65 tokens x 96: above the kernels'
    data = cfg["datasets"]["shapes_retrieval"]  # serial grain (32k elements), as the demo's images are
    data["image_size"] = 64
    for split in ("train", "eval"):
        data["processors"][split]["image"][0]["size"] = 64
    exp = load_experiment(str(write_yaml(tmp_path / "c.yaml", cfg)))
    torch.manual_seed(0)
    model = build_model(exp.model).train()
    builder = builders(exp)["shapes_retrieval"]
    builder.prepare(["train"])
    batch = next(iter(train_loader(builder.build("train"), 24, seed=0, num_workers=0, shuffle=True)))
    grads = []
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert "ln_vision.weight" in grads[0]  # the gathered image tokens are on the gradient's path
    for g in grads[1:]:
        assert all(torch.equal(g[n], grads[0][n]) for n in g), [n for n in g if not torch.equal(g[n], grads[0][n])]


def test_the_same_config_and_seed_log_the_same_losses(tmp_path: Path) -> None:
    logs = []
    for name in ("a", "b"):
        cfg = stage1_config(tmp_path, tmp_path / name, max_iters=12, log_every=1, eval_every=6, batch_size=24)
        assert train_main(["--cfg", str(write_yaml(tmp_path / f"{name}.yaml", cfg))]) == 0
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        logs.append([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records])
    assert len(logs[0]) == 14 and logs[0] == logs[1]  # 12 training and 2 evaluation records, bit for bit


def test_deterministic_kernels_are_on_by_default_on_cpu_and_mkl_is_strict(tmp_path: Path) -> None:
    cfg = stage1_config(tmp_path, tmp_path / "out")
    Runner(load_experiment(str(write_yaml(tmp_path / "c.yaml", cfg))))
    assert torch.are_deterministic_algorithms_enabled()
    assert mkl_reproducible()  # MKL_CBWR set by importing framework, before the first matrix product
