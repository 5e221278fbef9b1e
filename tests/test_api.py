"""``from framework import load``: three lines from a converted folder, a run folder or a config to captions,
answers, rankings and embeddings; no trained weights is an error unless asked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.convert import main as convert_main
from framework.errors import ConfigError
from framework.train import main as train_main

from conftest import write_yaml
from stage1_helpers import stage1_config


def _photo(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_three_lines_caption_a_photo_with_a_converted_model(tmp_path: Path) -> None:
    from test_convert import _tiny_hf_blip2

    src = _tiny_hf_blip2(tmp_path / "hf", "opt")
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv"),
                         "--options", "model.image_encoder.precision=fp32", "model.llm.precision=fp32"]) == 0
    photo = _photo(tmp_path / "cat.jpg")

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
    photos = [preprocess(_photo(tmp_path / f"{i}.png", i)) for i in range(2)]
    sims = model.rank(photos, ["a red circle", "two shapes", "a blue square"])
    assert sims.shape == (2, 3)
    feats = model.embed(images=photos, texts=["a red circle"])
    assert feats["images"].shape[0] == 2 and feats["texts"].shape[0] == 1
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    k = "vision_proj.weight"
    assert torch.equal(model.module.state_dict()[k], trained[k])  # the run's weights, not a fresh build


def test_no_trained_weights_is_refused_unless_asked(tmp_path: Path) -> None:
    from framework import load

    cfg = write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "out"))
    with pytest.raises(ConfigError, match="no trained weights"):
        load(cfg)
    model, preprocess = load(cfg, allow_random_weights=True)
    assert model.rank([preprocess(_photo(tmp_path / "a.png"))], ["a red circle"]).shape == (1, 1)
    with pytest.raises(ConfigError, match="neither a run folder"):
        load(tmp_path)


def test_a_model_only_file_loads_with_its_encoders_processing(tmp_path: Path) -> None:
    from framework import load

    spec = stage1_config(tmp_path, tmp_path / "out")["model"]
    model, preprocess = load(write_yaml(tmp_path / "model.yaml", {"model": spec}), allow_random_weights=True)
    assert preprocess(_photo(tmp_path / "a.png")).shape == (3, 32, 32)
