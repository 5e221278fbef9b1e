"""The runner: accumulation, AMP, NaN stops, dry runs, missing data, evaluation, logs, profiler."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import read_log, toy_config, write_yaml

from framework.commands.evaluate import main as evaluate_main
from framework.commands.train import main as train_main
from framework.core import checkpoint


def _train(tmp_path: Path, cfg, *extra: str) -> int:
    return train_main(["--cfg", str(write_yaml(tmp_path / "exp.yaml", cfg)), *extra])


def test_gradient_accumulation_equals_the_full_batch(tmp_path: Path) -> None:
    full = toy_config(tmp_path / "full", max_iters=4, batch_size=8)
    accum = toy_config(tmp_path / "accum", max_iters=4, batch_size=4, accum_steps=2)
    for cfg in (full, accum):
        cfg["model"]["dropout"] = 0.0
    assert train_main(["--cfg", str(write_yaml(tmp_path / "f.yaml", full))]) == 0
    assert train_main(["--cfg", str(write_yaml(tmp_path / "a.yaml", accum))]) == 0
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "accum" / "checkpoints" / "last.pt")["model"]
    assert int(b.pop("steps")) == 2 * int(a.pop("steps"))  # the toy model counts forward calls
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert [r["samples_per_sec"] > 0 for r in read_log(tmp_path / "accum")] == [True] * 4


def test_bf16_autocast_on_cpu_trains(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=3, amp="bf16")
    assert _train(tmp_path, cfg) == 0
    losses = [r["loss"] for r in read_log(tmp_path / "out")]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)


def test_fp16_on_cpu_is_refused_before_any_output(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=3, amp="fp16", device="cpu")
    assert _train(tmp_path, cfg) == 2
    assert "run.amp=fp16 needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nan_loss_stops_naming_iteration_and_term_and_keeps_last_checkpoint(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=10, checkpoint_every=2)
    cfg["model"]["nan_at_step"] = 5
    assert _train(tmp_path, cfg) == 1
    err = capsys.readouterr().err
    assert "iteration 5: loss term 'loss_words' is nan" in err and "last good checkpoint is" in err
    ckpt = checkpoint.load(tmp_path / "out" / "checkpoints" / "last.pt")
    assert ckpt["iter"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_iteration_based_run_evaluates_every_n_and_keeps_best(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=8, eval_every=4, test_splits=["test"], log_every=4)
    assert _train(tmp_path, cfg) == 0
    evals = read_log(tmp_path / "out", "eval")
    assert [e["iter"] for e in evals] == [4, 8, 8]  # two validations, then the test split
    assert [r["iter"] for r in read_log(tmp_path / "out")] == [1, 4, 8]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    best = min(evals[:2], key=lambda e: e["shapes_caption/val/loss"])
    assert metrics["best"] == {"metric": "shapes_caption/val/loss", "value": best["shapes_caption/val/loss"],
                               "iter": best["iter"]}
    assert "shapes_caption/test/loss" in metrics["test"]
    assert checkpoint.load(tmp_path / "out" / "checkpoints" / "best.pt")["iter"] == best["iter"]


def test_evaluate_cli_writes_metrics(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "train", max_iters=2)
    assert _train(tmp_path, cfg) == 0
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    assert evaluate_main(["--cfg", str(tmp_path / "train" / "config.yaml"), "--options",
                          f"model.checkpoint={ckpt}", f"run.output_dir={tmp_path / 'ev'}"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(ckpt)
    train_eval = read_log(tmp_path / "train", "eval")[-1]
    assert metrics["eval"]["shapes_caption/val/loss"] == pytest.approx(train_eval["shapes_caption/val/loss"])


def test_dry_run_builds_on_meta_and_lists_data_files(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "out")
    cfg["datasets"]["extra"] = {"builder": "toy_files", "root": str(tmp_path)}
    (tmp_path / "toy_train.json").write_text("{}")
    assert _train(tmp_path, cfg, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "image_encoder" in out and "head" in out and "total" in out
    assert f"[exists] extra: train annotations: {tmp_path / 'toy_train.json'}" in out
    assert f"[MISSING] extra: val annotations: {tmp_path / 'toy_val.json'}" in out
    assert "[generated on first use] shapes_caption" in out or "[exists] shapes_caption" in out
    assert not (tmp_path / "out").exists()


def test_missing_data_file_names_file_entry_and_fix(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "out")
    cfg["datasets"] = {"mine": {"builder": "toy_files", "root": str(tmp_path / "data")}}
    assert _train(tmp_path, cfg) == 2
    err = capsys.readouterr().err
    assert "dataset entry 'mine' (datasets.mine, datasets_cfg/mine.yaml) is missing 2 file(s)" in err
    assert f"train annotations: {tmp_path / 'data' / 'toy_train.json'}" in err
    assert "Download toy.json from https://example.org/toy" in err
    assert not (tmp_path / "out").exists()


def test_logs_tensorboard_and_profiler_trace(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=8, tensorboard=True, profile=True, profile_steps=3)
    assert _train(tmp_path, cfg) == 0
    out = tmp_path / "out"
    record = read_log(out)[0]
    assert {"iter", "epoch", "lr", "loss", "loss_words", "loss_l2", "sec_per_iter", "data_time", "step_time",
            "samples_per_sec"} <= set(record)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    traces = list((out / "profile").glob("*.pt.trace.json"))
    assert traces and json.loads(traces[0].read_text())["traceEvents"]
    log = (out / "train.log").read_text()
    assert "iteration 8" in log
    assert re.search(r"total\s+[\d,]+\s+[\d,]+", log) and "trainable" in log  # parameters per part at the start


def test_evaluating_a_training_run_leaves_its_files_byte_identical(tmp_path: Path, capsys) -> None:
    import hashlib

    cfg = toy_config(tmp_path / "train", max_iters=2)
    assert _train(tmp_path, cfg) == 0
    run = tmp_path / "train"

    def digests():
        return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run).parts}

    before = digests()
    ckpt = run / "checkpoints" / "best.pt"
    command = ["--cfg", str(run / "config.yaml"), "--options", f"model.checkpoint={ckpt}"]
    assert evaluate_main(command) == 0  # the run's own config: output_dir is the run
    assert digests() == before
    metrics = json.loads((run / "eval" / "best" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(ckpt) and "shapes_caption/val/loss" in metrics["eval"]
    assert evaluate_main(command) == 2  # again: the earlier evaluation is not replaced without being asked
    assert "holds an earlier evaluation" in capsys.readouterr().err
    assert evaluate_main(command + ["--overwrite"]) == 0 and digests() == before


def test_train_log_has_a_plain_line_per_log_step(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=4, log_every=2)
    assert _train(tmp_path, cfg) == 0
    text = (tmp_path / "out" / "train.log").read_text()
    lines = [line for line in text.splitlines() if " iter " in line and ": loss " in line]
    assert [line.split(" iter ")[1].split(":")[0] for line in lines] == ["1", "2", "4"]
    assert "\r" not in text and "sec_per_iter" in lines[0]


def test_evaluate_takes_a_run_folder(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "train", max_iters=2)
    assert _train(tmp_path, cfg) == 0
    assert evaluate_main(["--cfg", str(tmp_path / "train")]) == 0
    metrics = json.loads((tmp_path / "train" / "eval" / "best" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(tmp_path / "train" / "checkpoints" / "best.pt")
    assert evaluate_main(["--cfg", str(tmp_path)]) == 2  # a folder that is not a run


def test_tensorboard_shows_the_parameter_table_and_sample_predictions(tmp_path: Path) -> None:
    from helpers import stage2_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = stage2_config(tmp_path, tmp_path / "out")
    cfg["task"] = {"name": "captioning", "num_beams": 1, "max_new_tokens": 3, "min_new_tokens": 1}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 8, "val": 4}
    cfg["datasets"]["shapes_caption"] = shapes
    cfg["run"].update(max_iters=1, batch_size=4, tensorboard=True)
    assert _train(tmp_path, cfg) == 0
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert {"model/parameters/text_summary", "predictions/shapes_caption/val/text_summary"} <= set(tags)


def test_the_log_tells_a_slow_loader_from_a_slow_model(tmp_path: Path) -> None:
    """``data_time``: seconds an iteration waited for its batches; ``step_time``: the rest (forward, backward,
    optimizer). A processor sleeping 20 ms per image (8 per batch) against a model sleeping 0.2 s per step."""
    slow_data = toy_config(tmp_path / "data", max_iters=3, num_workers=0)
    slow_data["datasets"]["shapes_caption"]["processors"]["train"]["image"].insert(0, {"name": "slow",
                                                                                       "sleep_s": 0.02})
    slow_model = toy_config(tmp_path / "model", max_iters=3, num_workers=0)
    slow_model["model"]["sleep_s"] = 0.2
    for cfg in (slow_data, slow_model):
        assert _train(tmp_path, cfg) == 0
    for r in read_log(tmp_path / "data"):
        assert r["data_time"] >= 8 * 0.02 and r["data_time"] + r["step_time"] == pytest.approx(r["sec_per_iter"])
    for r in read_log(tmp_path / "model"):
        assert r["step_time"] >= 0.2 > r["data_time"]
