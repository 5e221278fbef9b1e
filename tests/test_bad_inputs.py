"""Every bad input a user can give is refused before any work with a message naming the culprit and the fix, or
skipped and counted (bad data records); none ends in a traceback or a silently wrong run."""
from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import List

import pytest
import torch
from helpers import stage1_config, toy_config, write_yaml

from framework.commands.convert import main as convert_main
from framework.commands.train import main as train_main


def _refused(tmp_path: Path, capsys, options: List[str], cfg=None) -> str:
    """Run train with ``options``; assert it exits 2 with an error line and no traceback, having written
    nothing; return the message."""
    cfg = cfg or toy_config(tmp_path / "out", max_iters=2, eval_splits=["val"])
    code = train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))] + (["--options", *options] if options else []))
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # refused before any output
    return err


@pytest.mark.parametrize("option, message", [
    ("run.grad_clip=-1", "run.grad_clip: must be > 0, got -1.0"),  # was: gradient ascent
    ("run.max_iters=0", "run.max_iters: must be >= 1, got 0"),  # was: the full epoch count
    ("run.max_iters=-5", "run.max_iters: must be >= 1, got -5"),  # was: exit 0 untrained
    ("run.output_dir=''", "run.output_dir: must not be empty"),  # was: the working directory
    ("run.batch_size=0", "run.batch_size: must be >= 1, got 0"),
    ("run.batch_size=-4", "run.batch_size: must be >= 1, got -4"),
    ("run.eval_batch_size=0", "run.eval_batch_size: must be >= 1"),
    ("run.log_every=0", "run.log_every: must be >= 1"),
    ("run.accum_steps=0", "run.accum_steps: must be >= 1"),
    ("run.num_workers=-1", "run.num_workers: must be >= 0"),
    ("run.eval_every=0", "run.eval_every: must be >= 1"),
    ("run.checkpoint_every=0", "run.checkpoint_every: must be >= 1"),
    ("run.train_splits=[]", "run.train_splits is empty"),
    ("run.optimizer.lr=-0.001", "run.optimizer.lr: must be in (0, 1], got -0.001"),
    ("run.optimizer.lr=1e40", "run.optimizer.lr: must be in (0, 1], got 1e+40"),
    ("run.optimizer.lr=.nan", "run.optimizer.lr: must be a finite number"),
    ("run.optimizer.betas=[0.9,1.5]", "run.optimizer.betas[1]: must be in [0, 1), got 1.5"),
    ("run.optimizer.betas=[-0.1,0.9]", "run.optimizer.betas[0]: must be in [0, 1)"),
    ("run.optimizer.betas=[0.9]", "run.optimizer.betas: must have exactly 2 items"),
    ("run.optimizer.eps=0", "run.optimizer.eps: must be > 0"),
    ("run.optimizer.weight_decay=-1", "run.optimizer.weight_decay: must be >= 0"),
    ("run.optimizer.lr_schedule.warmup_iters=-3", "run.optimizer.lr_schedule.warmup_iters: must be >= 0"),
    ("run.dist_timeout_s=0", "run.dist_timeout_s: must be > 0"),
    ("run.seed=-1", "run.seed: must be >= 0"),
    ("run.eval_splits[3]=val", "run.eval_splits has 1 items (indices 0 to 0)"),
    ("run.batch_size[0]=1", "run.batch_size is not a list in the config (it is 8)"),
    ("run.test_splits[0]=test", "run.test_splits is not set in the config"),
    ("datasets={_delete_: true}", "datasets: no data set is named"),
    ("datasets.shapes_caption.image_size=-3", "datasets.shapes_caption.image_size: must be >= 16, got -3"),
    ("datasets.shapes_caption.num_images.train=0", "datasets.shapes_caption.num_images.train: must be >= 1, got 0"),
    ("model.image_encoder.width=0", "model.image_encoder.width: must be >= 1, got 0"),
    ("run.output_dir=${oc.env:BLIP2_SURELY_UNSET}",
     "run.output_dir: cannot resolve its interpolation: \"Environment variable 'BLIP2_SURELY_UNSET' not found\""),
])
def test_a_bad_value_is_refused_naming_the_key(tmp_path: Path, capsys, option: str, message: str) -> None:
    assert message in _refused(tmp_path, capsys, [option])


@pytest.mark.parametrize("option, message", [
    ("model.qformer.hidden_size=30", "model.qformer: hidden_size 30 is not a multiple of num_heads 4"),
    ("model.qformer.num_query_tokens=0", "model.qformer.num_query_tokens: must be >= 1"),
    ("model.image_encoder.heads=5", "model.image_encoder: width 48 is not a multiple of heads 5"),
    ("model.image_encoder.image_size=30", "model.image_encoder: image_size 30 is not a multiple of patch_size 8"),
    ("model.max_txt_len=0", "model.max_txt_len: must be >= 2, got 0"),
    ("model.embed_dim=0", "model.embed_dim: must be >= 1, got 0"),
    ("model.temperature=0", "model.temperature: must be in [0.001, 0.5], got 0"),
    ("model.label_smoothing=1.5", "model.label_smoothing: must be in [0, 1), got 1.5"),
])
def test_a_bad_model_size_is_refused_naming_the_key(tmp_path: Path, capsys, option: str, message: str) -> None:
    assert message in _refused(tmp_path, capsys, [option], stage1_config(tmp_path, tmp_path / "out", max_iters=2))


@pytest.mark.parametrize("option, message", [
    ("model.image_encoder.image_size=40", "image encoder built for 40x40 images got (32, 32)"),
    ("run.batch_size=1", "ITM has no negative for some sample"),
])
def test_a_mismatch_met_at_the_first_step_is_an_error_not_a_traceback(tmp_path: Path, capsys, option: str,
                                                                     message: str) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", stage1_config(tmp_path, tmp_path / "out", max_iters=2))
    code = train_main(["--cfg", str(cfg), "--options", option])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_indexed_options_set_one_item_of_a_list(tmp_path: Path) -> None:
    from framework.engine.experiment import load_experiment

    cfg = write_yaml(tmp_path / "c.yaml", toy_config(tmp_path / "out", eval_splits=["val", "test"]))
    assert load_experiment(str(cfg), ["run.eval_splits[1]=train"]).run.eval_splits == ["val", "train"]


def test_an_interpolation_resolves_across_base_files(tmp_path: Path) -> None:
    from framework.engine.experiment import load_experiment

    base = toy_config(tmp_path / "unused")
    base["run"]["output_dir"] = str(tmp_path / "runs") + "/${model.name}_${run.seed}"
    write_yaml(tmp_path / "base.yaml", base)
    child = write_yaml(tmp_path / "child.yaml", {"_base_": "base.yaml", "run": {"seed": 7}})
    assert load_experiment(str(child)).run.output_dir == str(tmp_path / "runs" / "toy_captioner_7")


def test_an_output_dir_under_a_file_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("")
    cfg = toy_config(tmp_path / "a_file" / "out", max_iters=2)
    code = train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))])
    err = capsys.readouterr().err
    assert code == 2 and "a_file is a file, not a folder; set run.output_dir to a folder" in err


def test_a_corrupt_image_encoder_checkpoint_is_named(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "vit.pth"
    weights.write_bytes(b"PK\x03\x04 not a whole file")
    cfg = stage1_config(tmp_path, tmp_path / "out", max_iters=2)
    cfg["model"]["image_encoder"]["checkpoint"] = str(weights)
    err = _refused(tmp_path, capsys, [], cfg)
    assert f"image encoder weights (model.image_encoder.checkpoint) {weights} cannot be read" in err


def test_disk_full_while_checkpointing_stops_keeping_the_previous_checkpoint(tmp_path: Path, capsys,
                                                                           monkeypatch) -> None:
    from framework.core import checkpoint

    real_save, calls = torch.save, []

    def save(obj, f):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint meets a full disk halfway
            f.write(b"PK")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    cfg = toy_config(tmp_path / "out", max_iters=6, checkpoint_every=2, eval_splits=[])
    code = train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot write checkpoint" in err and "(No space left on device); the previous last.pt is kept" in err
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "out" / "checkpoints" / "last.pt")["iter"] == 2
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file


# ----------------------------------------------------------------------------------------------- converters
def test_corrupt_converter_sources_are_named(tmp_path: Path, capsys) -> None:
    lavis = tmp_path / "blip2_pretrained.pth"
    lavis.write_bytes(b"\x80\x02 half a pickle")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(lavis), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"{lavis} cannot be read" in err and "Traceback" not in err

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "blip-2", "vision_config": ')  # cut short
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(hf), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"--src {hf}: transformers cannot read it" in err and "Traceback" not in err

    toy = write_yaml(tmp_path / "toy.yaml", toy_config(tmp_path / "out"))
    assert convert_main(["--from", "ours", "--to", "hf", "--src", str(toy), "--out", str(tmp_path / "c")]) == 2
    assert "model 'toy_captioner': --to hf writes blip2_generative" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_converter_never_overwrites_a_folder_and_leaves_nothing_half_done(tmp_path: Path, capsys) -> None:
    from helpers import stage1_config

    from framework.core import checkpoint

    model = tmp_path / "model.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1, 4, 32), "bogus.weight": torch.zeros(2)}}, model)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("a user's file")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(model), "--out", str(taken)]) == 2
    assert f"--out {taken} exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    # a conversion that fails leaves no folder behind (one that fails after writing: test_convert's LAVIS test)
    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["model"]["checkpoint"] = str(tmp_path / "run.pt")
    checkpoint.save_atomic(checkpoint.make("blip2_qformer", {"bogus": torch.zeros(1)}, []), tmp_path / "run.pt")
    assert convert_main(["--from", "ours", "--to", "lavis", "--src", str(write_yaml(tmp_path / "e.yaml", cfg)),
                         "--out", str(tmp_path / "new")]) == 2
    assert "does not fit model" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_corrupt_feature_cache_is_refused_before_training(tmp_path: Path, capsys) -> None:
    from framework.data.feature_cache import open_cache

    folder = tmp_path / "cache"
    folder.mkdir()
    import numpy as np

    np.save(folder / "features.npy", np.zeros((4, 3, 2), dtype=np.float16))
    (folder / "index.json").write_text(json.dumps({f"{i}.png": i for i in range(4)}))
    (folder / "fingerprint.json").write_text(json.dumps({"encoder": "x"}))
    assert open_cache(folder, {"encoder": "x"}, "where", "make it") is not None
    data = (folder / "features.npy").read_bytes()
    (folder / "features.npy").write_bytes(data[: len(data) - 10])  # an interrupted copy
    from framework.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"where: the feature cache in .* cannot be read .*; remake it with: make it"):
        open_cache(folder, {"encoder": "x"}, "where", "make it")
    (folder / "features.npy").write_bytes(data)
    (folder / "index.json").write_text('{"0.png": 0, ')
    with pytest.raises(ConfigError, match="cannot be read"):
        open_cache(folder, {"encoder": "x"}, "where", "make it")
    (folder / "index.json").write_text(json.dumps({"0.png": 0, "1.png": 7}))
    with pytest.raises(ConfigError, match="inconsistent .features.npy has 4 rows"):
        open_cache(folder, {"encoder": "x"}, "where", "make it")


# ----------------------------------------------------------------------------------------------- records
def _records(tmp_path: Path, lines: List[bytes], **kw):
    from PIL import Image

    from plugins.datasets.records import RecordsBuilder

    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(10):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return RecordsBuilder("mine", kind="caption", files={"train": str(path)}, **kw)


def test_bad_records_are_skipped_counted_and_named(tmp_path: Path, caplog) -> None:
    good = [json.dumps({"image": f"imgs/{i}.png", "caption": f"a photo {i}"}).encode() for i in range(6)]
    bad = [json.dumps({"image": "imgs/6.png", "caption": {"text": "an object"}}).encode(),  # was: trained on its repr
           json.dumps({"image": "imgs/7.png", "captions": []}).encode(),  # was: dropped uncounted
           "{\"image\": \"imgs/8.png\", \"caption\": \"caf\u00e9\"}".encode("latin-1"),  # not UTF-8
           json.dumps({"image": 5, "caption": "a number for a path"}).encode(),
           json.dumps(["a list, not a record"]).encode()]
    builder = _records(tmp_path, good + bad, max_bad_fraction=0.5)
    with caplog.at_level("WARNING", logger="framework"):
        rows = builder.rows("train")
    assert [r.texts for r in rows] == [[f"a photo {i}"] for i in range(6)]
    log = caplog.text
    assert "skipped 5 of 11 records" in log
    assert "line 7: caption is not text (dict {\"text\": \"an object\"})" in log
    assert "line 8: captions is an empty list" in log
    assert "line 9: not UTF-8 text (byte 0xe9 at column 40); save the file as UTF-8" in log
    assert "line 10: image is not a path (int 5)" in log
    assert "line 11: not a record (a JSON object), but list" in log


def test_a_record_leaving_the_image_root_is_refused_unless_allowed(tmp_path: Path) -> None:
    from PIL import Image

    from framework.core.errors import BadDataError

    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps({"image": f"imgs/{i}.png", "caption": "a photo"}).encode() for i in range(5)]
    lines.append(json.dumps({"image": "../outside.png", "caption": "a photo"}).encode())
    with pytest.raises(BadDataError, match=r"1 records of .* name images outside its image root .*line 6: "
                                           r".*outside.png.*allow_outside_root: true"):
        _records(data, lines).rows("train")
    assert len(_records(data, lines, allow_outside_root=True).rows("train")) == 6
