"""``run.compile``: each part of the model under ``torch.compile``, the same losses and gradients as eager, and a
run whose checkpoints an eager run reads. The tests use torch's tracing backends (aot_eager traces forward and
backward as inductor does, without generating code, which takes minutes on a CPU); inductor's speed is
measured by ``benchmarks/compile.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
from helpers import read_log, stage1_config, toy_config, write_yaml


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Each test traces from scratch (dynamo caches compiled frames per code object, process-wide) and counts
    its own graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _stage1_losses_and_grads(tmp_path: Path, backend: str | None) -> Dict[str, torch.Tensor]:
    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model, compile_parts

    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["model"]["qformer"] |= {"dropout": 0.1, "attention_dropout": 0.1}  # RNG inside compiled graphs too
    torch.manual_seed(0)
    model = build_model(load_experiment(str(write_yaml(tmp_path / "s1.yaml", cfg))).model)
    if backend:
        compile_parts(model, backend)
    model.train()
    texts = ["a red circle on the left", "two shapes", "a blue square", "three shapes",
             "a green triangle in the middle", "one shape"]
    out: Dict[str, torch.Tensor] = {}
    for step in range(2):  # the second step runs the cached graphs
        g = torch.Generator().manual_seed(step)
        torch.manual_seed(10 + step)  # dropout masks and ITM's negatives
        model.zero_grad()
        losses = model({"image": torch.randn(6, 3, 32, 32, generator=g), "text_input": texts})
        losses["loss"].backward()
        out |= {f"{k}@{step}": v.detach() for k, v in losses.items()}
        out |= {f"grad:{k}@{step}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out


def test_compiled_parts_give_eager_losses_and_gradients(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    eager = _stage1_losses_and_grads(tmp_path, None)
    assert not counters["stats"]["unique_graphs"]
    compiled = _stage1_losses_and_grads(tmp_path, "aot_eager")
    assert counters["stats"]["unique_graphs"] >= 3  # the image encoder, the Q-Former and the heads were traced
    assert compiled.keys() == eager.keys()
    for k, v in eager.items():
        # the same operations traced into a graph; autograd may sum a weight's gradient contributions in
        # another order: a few units in the last place of the largest value
        tol = 8 * torch.finfo(v.dtype).eps * float(v.abs().max())
        torch.testing.assert_close(compiled[k], v, rtol=0, atol=tol, msg=k)


def test_a_compiled_run_logs_eager_losses_and_saves_checkpoints_eager_runs_read(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    from framework.commands.train import main

    runs, graphs = {}, {}
    for name, extra in (("eager", {}), ("compiled", {"compile": True, "compile_backend": "eager"})):
        cfg = toy_config(tmp_path / name, max_iters=4, **extra)
        assert main(["--cfg", str(write_yaml(tmp_path / f"{name}.yaml", cfg))]) == 0
        runs[name] = [r["loss"] for r in read_log(tmp_path / name)]
        graphs[name] = counters["stats"]["unique_graphs"]
    assert graphs["eager"] == 0 and graphs["compiled"] > 0  # run.compile compiled the parts
    assert len(runs["eager"]) == 4
    torch.testing.assert_close(runs["compiled"], runs["eager"], rtol=8 * torch.finfo(torch.float32).eps, atol=0)
    saved = {n: torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=False)["model"] for n in runs}
    assert saved["compiled"].keys() == saved["eager"].keys()  # in-place compile: no '_orig_mod.' in the names
    # an eager run continues the compiled one (run.compile is an execution setting --resume may change)
    cont = toy_config(tmp_path / "compiled", max_iters=6)
    assert main(["--cfg", str(write_yaml(tmp_path / "cont.yaml", cont)), "--resume", "auto"]) == 0
    assert [r["iter"] for r in read_log(tmp_path / "compiled")][-2:] == [5, 6]
