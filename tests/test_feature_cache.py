"""The frozen-feature cache: written once, trains to the same losses as the images, refused where it would lie."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_log, stage1_config, write_yaml

from framework.commands.cache_features import main as cache_main
from framework.commands.train import main as train_main


def _config(tmp: Path, out: str, **model_encoder):
    """The stage-1 test experiment over a pretrained (here: saved random) frozen fp16 tiny ViT."""
    cfg = stage1_config(tmp, tmp / out, max_iters=6, log_every=1)
    enc = cfg["model"]["image_encoder"]
    weights = tmp / "vit.pth"
    if not weights.exists():
        import torch

        from framework.core.registry import build

        vit = build("image_encoder", enc).state_dict()
        torch.save({k[len("vit."):]: v for k, v in vit.items()}, weights)  # EVA's key names
    enc.update({"precision": "fp16", "checkpoint": str(weights), "cache_dir": str(tmp), **model_encoder})
    return cfg


@pytest.mark.slow
def test_cached_features_train_to_the_same_losses_and_metrics(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "images.yaml", _config(tmp_path, "images"))
    assert cache_main(["--cfg", str(cfg)]) == 0
    folder = tmp_path / "features" / "shapes_retrieval"
    train = np.load(folder / "train" / "features.npy", mmap_mode="r")
    assert train.shape == (300, 17, 48) and train.dtype == np.float16  # 300 images (not 1500 captions), 4x4+1 tokens
    assert json.loads((folder / "val" / "fingerprint.json").read_text())["image_size"] == 32

    assert train_main(["--cfg", str(cfg)]) == 0
    cached = write_yaml(tmp_path / "cached.yaml", _config(tmp_path, "cached", cached=True))
    assert train_main(["--cfg", str(cached)]) == 0
    keys = ["loss", "loss_itc", "loss_itm", "loss_itg"]
    ref, got = read_log(tmp_path / "images"), read_log(tmp_path / "cached")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]  # fp16 tokens both ways
    assert read_log(tmp_path / "cached", "eval") == read_log(tmp_path / "images", "eval")


@pytest.mark.slow
def test_a_cache_is_refused_with_the_reason(tmp_path: Path, capsys) -> None:
    assert cache_main(["--cfg", str(write_yaml(tmp_path / "a.yaml", _config(tmp_path, "a")))]) == 0
    capsys.readouterr()

    other = _config(tmp_path, "b", cached=True, depth=3)  # another encoder
    assert train_main(["--cfg", str(write_yaml(tmp_path / "b.yaml", other))]) == 2
    err = capsys.readouterr().err
    assert "made by another encoder or image processing (depth: cache 2, this run 3)" in err
    assert "python -m framework.cache_features" in err

    bigger = _config(tmp_path, "c", cached=True, image_size=48)  # another image size
    for split in ("train", "eval"):
        bigger["datasets"]["shapes_retrieval"]["processors"][split]["image"][0]["size"] = 48
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", bigger))]) == 2
    err = capsys.readouterr().err
    assert "image_size: cache 32, this run 48" in err and "image_processors: cache" in err

    crops = _config(tmp_path, "d", cached=True)  # random augmentation
    crops["datasets"]["shapes_retrieval"]["processors"]["train"]["image"][0] = {"name": "random_resized_crop",
                                                                                "size": 32}
    assert train_main(["--cfg", str(write_yaml(tmp_path / "d.yaml", crops))]) == 2
    assert "processors augment randomly (RandomResizedCrop)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()  # refused before any output

    missing = _config(tmp_path, "e", cached=True, cache_dir=str(tmp_path / "nothing"))
    assert train_main(["--cfg", str(write_yaml(tmp_path / "e.yaml", missing))]) == 2
    assert "there is no feature cache in" in capsys.readouterr().err

    random_weights = _config(tmp_path, "f", checkpoint=None)
    assert cache_main(["--cfg", str(write_yaml(tmp_path / "f.yaml", random_weights))]) == 2
    assert "image_encoder.checkpoint is null" in capsys.readouterr().err


@pytest.mark.slow
def test_stage2_reads_the_same_cache(tmp_path: Path) -> None:
    from helpers import stage2_config

    def config(out: str, **encoder):
        cfg = stage2_config(tmp_path, tmp_path / out)
        cfg["model"]["image_encoder"] = _config(tmp_path, out, **encoder)["model"]["image_encoder"]
        cfg["run"].update({"max_iters": 3, "log_every": 1, "eval_splits": []})
        return write_yaml(tmp_path / f"{out}.yaml", cfg)

    assert cache_main(["--cfg", str(config("images")), "--splits", "train"]) == 0
    assert train_main(["--cfg", str(config("images"))]) == 0
    assert train_main(["--cfg", str(config("cached", cached=True))]) == 0
    assert [r["loss"] for r in read_log(tmp_path / "cached")] == [r["loss"] for r in read_log(tmp_path / "images")]
