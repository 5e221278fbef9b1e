"""``from framework import load``: three lines from a converted folder, a run folder or a config to captions,
answers, rankings and embeddings; no trained weights is an error unless asked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_photo, stage1_config, write_yaml

from framework.commands.convert import main as convert_main
from framework.commands.train import main as train_main
from framework.core.errors import ConfigError


def test_three_lines_caption_a_photo_with_a_converted_model(tmp_path: Path) -> None:
    from tiny_llms import make_tiny_hf_blip2

    src = make_tiny_hf_blip2(tmp_path / "hf", "opt")
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv"),
                         "--options", "model.image_encoder.precision=fp32", "model.llm.precision=fp32"]) == 0
    photo = random_photo(tmp_path / "cat.jpg")

    from framework import load
    model, preprocess = load(tmp_path / "conv")
    captions = model.caption([preprocess(photo)], max_new_tokens=5)

    assert len(captions) == 1 and isinstance(captions[0], str)
    x = preprocess(photo)
    assert x.shape == (3, 32, 32)  # the encoder's own evaluation size and normalisation, no data set needed
    same = model.module.generate(x[None], None, num_beams=5, max_new_tokens=5)
    assert captions == same and model.caption([str(photo)], max_new_tokens=5) == same  # paths work too
    answers = model.ask([x, x], ["what color is the circle ?", "what is it ?"], max_new_tokens=3)
    assert len(answers) == 2
    with pytest.raises(ConfigError, match="rank needs a model with"):
        model.rank([x], ["a red circle"])


def test_a_run_folder_loads_its_best_weights_and_ranks(tmp_path: Path) -> None:
    from framework import load

    cfg = stage1_config(tmp_path, tmp_path / "run", max_iters=2)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "s1.yaml", cfg))]) == 0
    model, preprocess = load(tmp_path / "run")
    photos = [preprocess(random_photo(tmp_path / f"{i}.png", i)) for i in range(2)]
    sims = model.rank(photos, ["a red circle", "two shapes", "a blue square"])
    assert sims.shape == (2, 3)
    feats = model.embed(images=photos, texts=["a red circle"])
    assert feats["images"].shape[0] == 2 and feats["texts"].shape[0] == 1
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    k = "vision_proj.weight"
    assert torch.equal(model.module.state_dict()[k], trained[k])  # the run's weights, not a fresh build
    from framework.engine.experiment import load_experiment
    from framework.engine.machine import seed_everything
    from framework.models.build import build_model

    exp = load_experiment(str(tmp_path / "run" / "config.yaml"))
    seed_everything(exp.run.seed)  # as the runner built it: the frozen encoder had no weights file
    as_trained = build_model(exp.model).state_dict()
    k = "image_encoder.vit.blocks.0.attn.qkv.weight"
    assert torch.equal(model.module.state_dict()[k], as_trained[k])


def test_no_trained_weights_is_refused_unless_asked(tmp_path: Path) -> None:
    from framework import load

    cfg = write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "out"))
    with pytest.raises(ConfigError, match="no trained weights"):
        load(cfg)
    model, preprocess = load(cfg, allow_random_weights=True)
    assert model.rank([preprocess(random_photo(tmp_path / "a.png"))], ["a red circle"]).shape == (1, 1)
    with pytest.raises(ConfigError, match="neither a run folder"):
        load(tmp_path)


def test_a_model_only_file_loads_with_its_encoders_processing(tmp_path: Path) -> None:
    from framework import load

    spec = stage1_config(tmp_path, tmp_path / "out")["model"]
    model, preprocess = load(write_yaml(tmp_path / "model.yaml", {"model": spec}), allow_random_weights=True)
    assert preprocess(random_photo(tmp_path / "a.png")).shape == (3, 32, 32)


def test_extract_writes_the_embeddings_with_their_ids(tmp_path: Path, capsys) -> None:
    from safetensors import safe_open

    from framework import load
    from framework.commands.extract import main as extract_main

    cfg = stage1_config(tmp_path, tmp_path / "run", max_iters=1)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "s1.yaml", cfg))]) == 0
    (tmp_path / "photos").mkdir()
    photos = [random_photo(tmp_path / "photos" / f"{i}.png", i) for i in range(3)]
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "texts.txt").write_text("a red circle\ntwo shapes\n")
    out = tmp_path / "feats.safetensors"
    command = ["--cfg", str(tmp_path / "run"), "--images", str(tmp_path / "photos"), "--texts",
               str(tmp_path / "texts.txt"), "--out", str(out)]
    assert extract_main(command) == 1  # the broken file is named and left out
    assert "broken.jpg" in capsys.readouterr().err
    model, preprocess = load(tmp_path / "run")
    expected = model.embed(images=[preprocess(p) for p in photos], texts=["a red circle", "two shapes"])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["image_ids"]) == [str(p) for p in photos]
        assert json.loads(meta["text_ids"]) == ["a red circle", "two shapes"]
        torch.testing.assert_close(f.get_tensor("images"), expected["images"])
        torch.testing.assert_close(f.get_tensor("texts"), expected["texts"])
    assert extract_main(command) == 2 and "exists" in capsys.readouterr().err  # never over an existing file
    npz = tmp_path / "feats.npz"
    assert extract_main(command[:-1] + [str(npz)]) == 1
    data = np.load(npz, allow_pickle=True)
    assert data["images"].shape[0] == 3 and list(data["text_ids"]) == ["a red circle", "two shapes"]
