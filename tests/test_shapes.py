"""The generated shapes set: deterministic bytes, official formats, and text that is true of each image."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from framework.core.errors import ConfigError
from plugins.datasets.shapes import COLORS, ShapesBuilder, generate

COUNTS = {"train": 40, "val": 12, "test": 12}
WORDS = {"one": 1, "two": 2, "three": 3}
POSITION = {"on the left": 0, "in the middle": 1, "on the right": 2}
OBJ = r"(?:an?|a single) (\w+) (circle|square|triangle)"


def _digest(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "set"
    generate(root, seed=3, image_size=48, num_images=COUNTS)
    return root


def test_same_seed_same_bytes_other_seed_other_bytes(shapes: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", seed=3, image_size=48, num_images=COUNTS)
    assert _digest(tmp_path / "again") == _digest(shapes)
    generate(tmp_path / "other", seed=4, image_size=48, num_images=COUNTS)
    assert _digest(tmp_path / "other") != _digest(shapes)


def test_builder_generates_once_into_a_fingerprinted_folder(tmp_path: Path) -> None:
    b = ShapesBuilder("shapes_caption", annotations="caption", cache_dir=str(tmp_path), seed=1, image_size=32,
                      num_images={"train": 4, "val": 2})
    b.prepare(["train", "val"])
    stamp = (b.root / "annotations" / "captions_train.json").stat().st_mtime_ns
    b.prepare(["train"])
    assert (b.root / "annotations" / "captions_train.json").stat().st_mtime_ns == stamp
    assert ShapesBuilder("x", annotations="vqa", cache_dir=str(tmp_path), seed=1, image_size=32,
                         num_images={"train": 4, "val": 2}).root == b.root  # shared by the annotation kinds
    assert ShapesBuilder("x", annotations="caption", cache_dir=str(tmp_path), seed=2, image_size=32,
                         num_images={"train": 4, "val": 2}).root != b.root
    with pytest.raises(ConfigError, match=r"splits \['test'\] are not generated"):
        b.prepare(["test"])


def test_annotations_load_with_pycocotools(shapes: Path) -> None:
    coco = COCO(str(shapes / "annotations" / "captions_val.json"))
    assert len(coco.getImgIds()) == COUNTS["val"]
    for img_id in coco.getImgIds():
        caps = [a["caption"] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        assert len(caps) == 5 and len(set(caps)) == 5  # several different captions per image
        assert (shapes / "images" / coco.loadImgs(img_id)[0]["file_name"]).is_file()
    # the result format pycocoevalcap consumes loads against it
    res = coco.loadRes([{"image_id": i, "caption": "a red circle"} for i in coco.getImgIds()])
    assert len(res.getImgIds()) == COUNTS["val"]
    questions = json.loads((shapes / "annotations" / "vqa_questions_val.json").read_text())["questions"]
    answers = json.loads((shapes / "annotations" / "vqa_annotations_val.json").read_text())["annotations"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert all(len(a["answers"]) == 10 for a in answers)
    assert {a["answer_type"] for a in answers} == {"yes/no", "number", "other"}


def _see(path: Path) -> List[Tuple[str, str, float]]:
    """Read the objects off the pixels: (colour, shape, centre x / width) for each colour present."""
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    seen = []
    for name, rgb in COLORS.items():
        mask = (px == np.array(rgb)).all(-1)
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
        shape = "square" if fill > 0.93 else "circle" if fill > 0.68 else "triangle"
        seen.append((name, shape, (xs.min() + xs.max() + 1) / 2 / px.shape[1]))
    return seen


def _check_caption(caption: str, seen: List[Tuple[str, str, float]]) -> None:
    objects = {(c, s): x for c, s, x in seen}
    mentioned = re.findall(OBJ, caption)
    assert mentioned and set(mentioned) == set(objects), (caption, seen)
    if m := re.match(r"(one|two|three) shapes?:", caption):
        assert WORDS[m.group(1)] == len(seen), caption
    for color, shape, where in re.findall(OBJ + r" (on the left|in the middle|on the right)", caption):
        assert int(objects[(color, shape)] * 3) == POSITION[where], caption
    if caption.endswith("from left to right"):
        xs = [objects[o] for o in mentioned]
        assert xs == sorted(xs), caption


def _answer(question: str, seen: List[Tuple[str, str, float]]) -> str:
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return next(s for c, s, _ in seen if c == m.group(1))
    if question == "how many shapes are there?":
        return str(len(seen))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(s == m.group(1) for _, s, _ in seen))
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (color,) = [c for c, s, _ in seen if s == m.group(1)]
        return color
    m = re.fullmatch(r"is the (\w+) (\w+) to the left of the (\w+) (\w+)\?", question)
    assert m, f"unexpected question {question!r}"
    x = {(c, s): x for c, s, x in seen}
    return "yes" if x[m.group(1), m.group(2)] < x[m.group(3), m.group(4)] else "no"


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_caption_and_answer_is_true_of_its_image(shapes: Path, split: str) -> None:
    ann = shapes / "annotations"
    caps = json.loads((ann / f"captions_{split}.json").read_text())
    files = {im["id"]: shapes / "images" / im["file_name"] for im in caps["images"]}
    seen = {i: _see(f) for i, f in files.items()}
    assert {len(s) for s in seen.values()} == {1, 2, 3}
    for a in caps["annotations"]:
        _check_caption(a["caption"], seen[a["image_id"]])
    questions = {q["question_id"]: q for q in json.loads((ann / f"vqa_questions_{split}.json").read_text())["questions"]}
    for a in json.loads((ann / f"vqa_annotations_{split}.json").read_text())["annotations"]:
        q = questions[a["question_id"]]
        truth = _answer(q["question"], seen[q["image_id"]])
        assert {x["answer"] for x in a["answers"]} == {truth}, (q["question"], truth, files[q["image_id"]])
    for r in json.loads((ann / f"retrieval_{split}.json").read_text()):
        for c in r["caption"]:
            _check_caption(c, seen[r["image_id"]])


def test_the_three_annotation_kinds_build_sample_dicts(tmp_path: Path) -> None:
    kw = dict(cache_dir=str(tmp_path), seed=0, image_size=32, num_images={"train": 6, "val": 3},
              processors={"train": {"image": [{"name": "normalize"}]}, "eval": {"image": [{"name": "normalize"}]}})
    cap = ShapesBuilder("c", annotations="caption", **kw)
    cap.prepare(["train", "val"])
    s = cap.build("train")[0]
    assert s["image"].shape == (3, 32, 32) and isinstance(s["text_input"], str) and "image_id" in s
    assert len(cap.build("val")[0]["captions"]) == 5
    vqa = ShapesBuilder("v", annotations="vqa", **kw).build("val")[0]
    assert {"question", "question_id", "answers", "image"} <= set(vqa) and len(vqa["answers"]) == 10
    ret = ShapesBuilder("r", annotations="retrieval", **kw).build("val")
    assert len(ret) == 3 and len(ret.texts) == 15 and ret.txt2img[:5] == [0] * 5 and ret.img2txt[1] == list(range(5, 10))
