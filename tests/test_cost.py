"""``--dry-run``'s cost of an iteration (``framework.engine.cost``): memory against the measured CPU peak at two model
sizes, FLOPs against a count from the parameters, the largest batch, and the real-size configs in seconds."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, stage1_config, write_yaml
from tiny_bert import make_tiny_bert, vocab_size

sys.path.insert(0, str(REPO))


def _stage1(tmp_path: Path, hidden: int, layers: int, vit_width: int, vit_depth: int, image: int, batch: int) -> Path:
    """The tests' stage-1 experiment at a given size: a BERT of that size made here, 32 queries."""
    bert = make_tiny_bert(tmp_path / "bert", hidden=hidden, layers=layers, heads=4, intermediate=4 * hidden)
    cfg = stage1_config(tmp_path, tmp_path / "out")
    model = cfg["model"]
    model["image_encoder"].update(image_size=image, width=vit_width, depth=vit_depth, mlp_dim=4 * vit_width)
    model["qformer"].update(hidden_size=hidden, num_layers=layers, intermediate_size=4 * hidden, bert=str(bert),
                            vocab_size=vocab_size(bert), num_query_tokens=32)
    model["embed_dim"] = 256
    cfg["run"]["batch_size"] = batch
    return write_yaml(tmp_path / "stage1.yaml", cfg)


# (Q-Former width, layers, ViT width, ViT depth, image size, batch): peaks of about 0.3 and 0.8 GB
SIZES = {"small": (256, 2, 128, 2, 64, 24), "mid": (384, 2, 192, 2, 64, 48)}


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_memory_estimate_is_within_20_percent_of_the_measured_cpu_peak(size: str, tmp_path: Path) -> None:
    from benchmarks.peak_memory import measure
    from framework.engine.cost import step_cost
    from framework.engine.experiment import load_experiment

    cfg = _stage1(tmp_path, *SIZES[size])
    exp = load_experiment(str(cfg))
    estimate = step_cost(exp).peak_bytes
    measured = measure(str(cfg), exp.run.batch_size)
    print(f"{size}: estimated {estimate / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB "
          f"({estimate / measured:.3f})")
    assert abs(estimate - measured) <= 0.2 * measured


def test_the_largest_batch_reproduces_the_estimate_at_that_batch(tmp_path: Path) -> None:
    from framework.engine.cost import step_cost
    from framework.engine.experiment import load_experiment

    exp = load_experiment(str(_stage1(tmp_path, *SIZES["small"])))
    at_8, at_24 = step_cost(exp, 8), step_cost(exp, 24)
    assert at_8.weights_bytes == at_24.weights_bytes and at_8.trainable_bytes == at_24.trainable_bytes
    # activations are linear in the batch up to ITC's [B, B, queries] similarities: one sample either way
    assert abs(at_8.largest_batch(at_24.peak_bytes) - 24) <= 1
    assert at_8.largest_batch(at_8.weights_bytes) == 0  # no room for a single sample
    assert 2.9 < at_24.flops / at_8.flops < 3.1  # FLOPs grow with the batch


def _cost_lines(out: str) -> dict:
    flops = re.search(r"^  ([\d,.]+) TFLOPs forward \+ backward$", out, re.M)
    peak = re.search(r"^  peak memory ([\d,.]+) GiB = weights ([\d,.]+) \+ gradients and AdamW state ([\d,.]+) \+ "
                     r"activations ([\d,.]+) ", out, re.M)
    fits = re.search(r"^  largest batch per process: (\d+) on a 24 GB card, (\d+) on a 40 GB card, (\d+) on a 80 GB "
                     r"card$", out, re.M)
    assert flops and peak and fits, out
    return {"tflops": float(flops.group(1).replace(",", "")), "peak": [float(g) for g in peak.groups()],
            "fits": [int(g) for g in fits.groups()]}


@pytest.mark.parametrize("cfg, vit, llm, tokens", [
    # (config, frozen ViT parameters, frozen LLM parameters, LLM tokens per sample: 32 queries + text); stage 1's
    # estimate runs in README.md's dry run (tests/test_readme.py) and in benchmarks/dry_run_cost.py
    ("stage2_vitl_opt2.7b.yaml", 290_581_504, 2_651_596_800, 32 + 32),
    # FlanT5: the encoder reads the queries and the prompt (about 34 tokens), the decoder the text (32)
    ("stage2_flant5xxl.yaml", 985_894_528, 11_135_332_352, 33),
])
def test_the_dry_run_gives_flops_and_memory_of_a_real_size_config(cfg: str, vit: int, llm: int, tokens: int,
                                                                   capsys) -> None:
    from framework.commands.train import main as train_main

    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cost = _cost_lines(out)
    batch = int(re.search(r"at batch (\d+) per process", out).group(1))
    total, weights, state, activations = cost["peak"]
    assert abs(total - (weights + state + activations)) < 0.02
    # the frozen ViT runs forward only: 2 FLOPs per parameter and image token (257 at 224 px, patch 14)
    vit_flops = 2 * vit * 257 * batch / 1e12
    # the frozen LLM runs forward and back-propagates to its input (not to its weights): about 4 FLOPs per
    # parameter and token; the Q-Former (about 0.1B parameters on 32 queries) adds a few percent
    expected = vit_flops + 4 * llm * tokens * batch / 1e12
    assert abs(cost["tflops"] - expected) < 0.15 * expected, (cost["tflops"], expected)
    small, forty, eighty = cost["fits"]
    assert small < forty < eighty and forty > 0  # a larger card holds a larger batch


@pytest.mark.parametrize("cfg", ["finetune/vqav2_opt2.7b.yaml"])
def test_the_dry_run_costs_a_task_whose_samples_are_not_captions(cfg: str, capsys) -> None:
    """VQA fine-tuning reads questions and answers: the task adds them to the model's example batch (it once
    stopped the dry run with a KeyError)."""
    from framework.commands.train import main as train_main

    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / cfg), "--dry-run"]) == 0
    cost = _cost_lines(capsys.readouterr().out)
    assert cost["tflops"] > 0 and cost["fits"][1] > 0


def test_a_run_on_cached_features_is_costed_without_its_encoder(tmp_path: Path) -> None:
    from framework.engine.cost import step_cost
    from framework.engine.experiment import load_experiment

    cfg = _stage1(tmp_path, *SIZES["small"])
    images = step_cost(load_experiment(str(cfg)))
    cached = step_cost(load_experiment(str(cfg), ["model.image_encoder.cached=true"]))
    assert cached.weights_bytes < images.weights_bytes  # the ViT is not built
    assert cached.flops < images.flops and cached.trainable_bytes == images.trainable_bytes


def test_a_model_that_does_not_say_what_its_batch_holds_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    """The cost estimate runs a training step on the batch the model describes (``example_batch``): the framework
    names no batch key. A model without it gets a clear error, and ``--no-cost`` still dry-runs it."""
    from helpers import toy_config

    import framework.engine.cost
    from framework.commands.train import main as train_main

    class NoBatchModel(torch.nn.Module):  # a class of its own: isinstance results of other classes are cached
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 2)

    monkeypatch.setattr(framework.engine.cost, "build_model", lambda spec: NoBatchModel())
    cfg = write_yaml(tmp_path / "c.yaml", toy_config(tmp_path / "out"))
    assert train_main(["--cfg", str(cfg), "--dry-run"]) == 2
    assert ("the cost estimate (--dry-run) needs a model with example_batch() (or pass --no-cost); NoBatchModel "
            "has none") in capsys.readouterr().err
    assert train_main(["--cfg", str(cfg), "--dry-run", "--no-cost"]) == 0


def test_fsdp_divides_what_is_sharded_and_recomputing_the_llm_layers_trades_flops_for_activations(
        tmp_path: Path) -> None:
    from helpers import stage2_config

    from framework.engine.cost import FSDP_RANKS, step_cost
    from framework.engine.experiment import load_experiment

    cfg = write_yaml(tmp_path / "s2.yaml", stage2_config(tmp_path, tmp_path / "out"))
    ddp = step_cost(load_experiment(str(cfg)))
    fsdp = ["run.strategy=fsdp"]
    kept = step_cost(load_experiment(str(cfg), fsdp + ["run.fsdp.activation_checkpointing=false"]))
    recomputed = step_cost(load_experiment(str(cfg), fsdp))
    assert kept.trainable_bytes == ddp.trainable_bytes // FSDP_RANKS  # gradients and AdamW state: a shard each
    assert ddp.weights_bytes / FSDP_RANKS < kept.weights_bytes < ddp.weights_bytes  # a shard + the gathered units
    assert kept.activation_bytes == ddp.activation_bytes and kept.flops == ddp.flops  # the same step
    # the OPT layers keep only their inputs, and run their forward twice
    assert recomputed.activation_bytes < kept.activation_bytes and recomputed.flops > kept.flops
