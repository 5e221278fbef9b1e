"""``framework.predict`` on images of every size and mode, with a corrupt file among them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import stage1_config, stage2_config, write_yaml
from PIL import Image

from framework.commands.predict import main as predict_main
from framework.data.images import load_image


def _images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (50, 60, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(folder / "big.jpg", quality=50)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_caption_every_mode_and_size_and_name_the_corrupt_file(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "photos")
    cfg = write_yaml(tmp_path / "s2.yaml", stage2_config(tmp_path, tmp_path / "out"))
    rc = predict_main(["--cfg", str(cfg), "--allow-random-weights", "--json", "--batch-size", "2", "--num-beams", "2",
                       "--max-new-tokens", "3", "caption", str(tmp_path / "photos")])
    out, err = capsys.readouterr()
    assert rc == 1  # one file failed, the others were captioned
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(Path(r["image"]).name for r in records) == ["alpha.png", "big.jpg", "gray.png"]
    assert all(isinstance(r["caption"], str) for r in records)
    assert "broken.jpg: cannot read image" in err

    rc = predict_main(["--cfg", str(cfg), "--allow-random-weights", "--num-beams", "1", "--max-new-tokens", "2", "ask",
                       str(tmp_path / "photos" / "gray.png"), "what color is the circle ?"])
    line = capsys.readouterr().out.strip().split("\t")
    assert rc == 0 and line[:2] == [str(tmp_path / "photos" / "gray.png"), "what color is the circle ?"]


def test_rank_texts_and_images_with_a_stage1_model(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "photos")
    cfg = write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "out"))
    rc = predict_main(["--cfg", str(cfg), "--allow-random-weights", "--json", "rank", "--texts", "a red circle",
                       "two squares", "--",
                       str(tmp_path / "photos" / "gray.png"), str(tmp_path / "photos" / "big.jpg")])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(records) == 4  # each image's texts, each text's images
    assert sorted(records[0]["texts"]) == ["a red circle", "two squares"]
    assert records[0]["scores"] == sorted(records[0]["scores"], reverse=True)
    with pytest.raises(SystemExit):
        predict_main(["--cfg", str(cfg), "--allow-random-weights", "caption"])  # no images: argparse names what is missing


def test_exif_rotation_and_alpha_are_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent over white


def test_untrained_weights_are_refused_unless_asked_and_options_go_anywhere(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "photos")
    cfg = str(write_yaml(tmp_path / "s2.yaml", stage2_config(tmp_path, tmp_path / "out")))
    image = str(tmp_path / "photos" / "gray.png")
    assert predict_main(["--cfg", cfg, "caption", image]) == 2
    assert "no trained weights" in capsys.readouterr().err
    # --options before the subcommand no longer swallows it (nor the image after it)
    assert predict_main(["--cfg", cfg, "--allow-random-weights", "--options", "model.max_txt_len=20", "--num-beams",
                         "1", "--max-new-tokens", "2", "caption", image]) == 0
    assert capsys.readouterr().out.startswith(image)
    (tmp_path / "empty").mkdir()
    assert predict_main(["--cfg", cfg, "--allow-random-weights", "caption", str(tmp_path / "empty")]) == 2
    assert "empty: no image files in this folder" in capsys.readouterr().err


def test_a_run_folder_and_a_converted_folder_are_accepted(tmp_path: Path, capsys) -> None:
    from tiny_llms import make_tiny_hf_blip2

    from framework.commands.convert import main as convert_main
    from framework.commands.train import main as train_main

    _images(tmp_path / "photos")
    image = str(tmp_path / "photos" / "gray.png")
    cfg = stage1_config(tmp_path, tmp_path / "run", max_iters=1)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "s1.yaml", cfg))]) == 0
    capsys.readouterr()
    assert predict_main(["--cfg", str(tmp_path / "run"), "--json", "rank", "--texts", "a red circle", "--", image]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["image"] == image
    src = make_tiny_hf_blip2(tmp_path / "hf", "opt")
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv")]) == 0
    capsys.readouterr()
    assert predict_main(["--cfg", str(tmp_path / "conv"), "--options", "model.image_encoder.precision=fp32",
                         "model.llm.precision=fp32", "--max-new-tokens", "3", "caption", image]) == 0
    assert capsys.readouterr().out.startswith(image)
