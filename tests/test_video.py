"""Video through decord: a clip written by the test decodes to the configured frames, and zero-shot video QA runs
(each frame through encoder and Q-Former, the frames' queries concatenated into one visual prompt)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from avi import write_avi
from helpers import stage2_config, write_yaml
from PIL import Image

from framework.commands.evaluate import main as evaluate_main

COLORS = [(220, 30, 30), (30, 160, 50), (30, 60, 220), (235, 200, 20)]
EVAL = {"image": [{"name": "resize", "size": 32}, {"name": "normalize", "stats": "none"}]}


def _fixture(root: Path) -> Path:
    """Three 12-frame clips of a coloured square changing colour, and a question each."""
    (root / "videos").mkdir(parents=True)
    (root / "annotations").mkdir()
    for v in range(3):
        frames = []
        for i in range(12):
            img = Image.new("RGB", (64, 64), (255, 255, 255))
            img.paste(COLORS[(v + i // 3) % 4], (12, 12, 52, 52))
            frames.append(img)
        write_avi(root / "videos" / f"video{v}.avi", frames)
    qa = [{"id": v, "video_id": v, "question": "what color is the square ?", "answer": "red"} for v in range(3)]
    (root / "annotations" / "test_qa.json").write_text(json.dumps(qa))
    return root


def _builder(root: Path, **kw):
    from plugins.datasets.video_qa import VideoQA

    return VideoQA("clips", root=str(root), video_pattern="video{}.avi", processors={"eval": EVAL}, **kw)


def test_a_generated_clip_decodes_to_the_configured_frames(tmp_path: Path) -> None:
    from framework.data.video import uniform_frame_indices

    data = _builder(_fixture(tmp_path), num_frames=4).build("test")
    sample = data[1]
    assert sample["image"].shape == (4, 3, 32, 32) and sample["answers"] == ["red"] and sample["question_id"] == 1
    assert uniform_frame_indices(12, 4) == [1, 4, 7, 10]  # the middle of four equal segments
    centre = sample["image"][:, :, 16, 16].numpy() * 255  # the square's colour in each decoded frame
    expected = np.array([COLORS[(1 + i // 3) % 4] for i in (1, 4, 7, 10)])
    assert np.abs(centre - expected).max() < 12  # JPEG frames: a few levels off
    assert _builder(tmp_path, num_frames=7).build("test")[0]["image"].shape[0] == 7


def test_an_unreadable_video_is_named(tmp_path: Path) -> None:
    root = _fixture(tmp_path)
    (root / "videos" / "video2.avi").write_bytes(b"RIFF not a video")
    with pytest.raises(ValueError, match=r"video .*video2.avi cannot be decoded"):
        _builder(root).build("test")[2]


@pytest.mark.slow
def test_zero_shot_video_qa_runs_on_a_tiny_fixture(tmp_path: Path) -> None:
    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model

    root = _fixture(tmp_path / "clips")
    cfg = stage2_config(tmp_path, tmp_path / "out")
    cfg["task"] = {"name": "vqa", "metric": "exact", "num_beams": 2, "max_new_tokens": 3}
    cfg["datasets"] = {"clips": {"builder": "video_qa", "root": str(root), "num_frames": 4,
                                 "video_pattern": "video{}.avi", "processors": {"eval": EVAL}}}
    cfg["run"].update({"train_splits": [], "eval_splits": ["test"], "batch_size": 2})
    path = write_yaml(tmp_path / "video.yaml", cfg)
    assert evaluate_main(["--cfg", str(path)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["eval"]
    assert 0.0 <= metrics["clips/test/accuracy"] <= 100.0
    preds = json.loads(next((tmp_path / "out" / "predictions").glob("clips_test_*.json")).read_text())
    assert sorted(p["question_id"] for p in preds) == [0, 1, 2]

    model = build_model(load_experiment(str(path)).model).eval()
    clips = torch.stack([_builder(root).build("test")[i]["image"] for i in range(2)])
    prompt = model.visual_prompt(clips, ["question"] * 2)
    per_frame = model.visual_prompt(clips[1], ["question"] * 4)  # the four frames of the second clip as images
    q = model.qformer.num_query_tokens
    assert prompt.shape == (2, 4 * q, model.llm.hidden_size)
    assert torch.allclose(prompt[1], per_frame.reshape(4 * q, -1), atol=1e-6)  # frames' queries side by side
