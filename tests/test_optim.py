"""Learning-rate schedule and parameter groups."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import read_log, toy_config, write_yaml
from torch import nn

from framework.commands.train import main as train_main
from framework.core.errors import ConfigError
from framework.core.registry import LR_SCHEDULERS
from framework.engine.optim import OptimConfig, param_groups


def expected_lr(step: int, base: float, min_lr: float, warmup: int, total: int, start: float = 0.0) -> float:
    if step < warmup:
        return start + (base - start) * step / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - 1 - warmup)))


@pytest.mark.parametrize("warmup_epochs", [0.5, 2.5])
def test_warmup_cosine_matches_formula_every_step(warmup_epochs: float) -> None:
    per_epoch, total = 10, 50
    lr = LR_SCHEDULERS.get("linear_warmup_cosine")(base_lr=1e-3, total_iters=total, iters_per_epoch=per_epoch,
                                                    min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=warmup_epochs)
    warmup = round(warmup_epochs * per_epoch)
    values = [lr(s) for s in range(total)]
    for s, v in enumerate(values):
        assert v == pytest.approx(expected_lr(s, 1e-3, 1e-5, warmup, total, 1e-6), rel=1e-12, abs=1e-15)
    # strictly rising through the whole warmup, also across epoch boundaries; ends at min_lr
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup + 1]))
    assert values[-1] == pytest.approx(1e-5)


@pytest.mark.slow
def test_runner_sets_the_scheduled_lr_at_every_step_with_multi_epoch_warmup(tmp_path: Path) -> None:
    # 48 captions... toy set: 48 images x 5 captions = 240 samples / batch 8 = 30 steps per epoch
    cfg = toy_config(tmp_path / "out", max_epochs=3)
    cfg["run"]["optimizer"] = {"lr": 1e-2, "lr_schedule": {"name": "linear_warmup_cosine", "warmup_epochs": 1.5,
                                                          "min_lr": 1e-4}}
    assert train_main(["--cfg", str(write_yaml(tmp_path / "e.yaml", cfg))]) == 0
    log = read_log(tmp_path / "out")
    assert len(log) == 90
    for r in log:
        assert r["lr"] == pytest.approx(expected_lr(r["iter"] - 1, 1e-2, 1e-4, 45, 90), rel=1e-9)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.lin = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.scale = nn.Parameter(torch.ones(()))
        self.frozen = nn.Linear(3, 3).requires_grad_(False)

    def no_weight_decay(self):
        return ["embed.weight"]


def test_no_weight_decay_on_biases_norms_1d_and_named() -> None:
    groups = param_groups(_Net(), OptimConfig(weight_decay=0.1))
    by_decay = {g["weight_decay"]: sorted(g["names"]) for g in groups}
    assert by_decay == {0.1: ["lin.weight"], 0.0: ["embed.weight", "lin.bias", "norm.bias", "norm.weight", "scale"]}


def test_layer_decay_scales_lr_and_needs_layer_ids() -> None:
    with pytest.raises(ConfigError, match=r"layer_decay needs the model \(_Net\) to define layer_id"):
        param_groups(_Net(), OptimConfig(layer_decay=0.5))
    net = _Net()
    net.num_layers = 2
    net.layer_id = lambda name: {"embed": 0, "lin": 1, "norm": 2}.get(name.split(".")[0], 3)
    scales = {n: g["lr_scale"] for g in param_groups(net, OptimConfig(layer_decay=0.5)) for n in g["names"]}
    assert scales == {"embed.weight": 0.125, "lin.weight": 0.25, "lin.bias": 0.25, "norm.weight": 0.5,
                      "norm.bias": 0.5, "scale": 1.0}
