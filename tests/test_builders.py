"""Each real data set's builder reads a small fixture written in its official file format (the real field
names, generated images) and gives the same sample dict as the shapes set of the same kind."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from PIL import Image

from framework.core.registry import DATASETS

PROC = {"train": {"image": [{"name": "resize", "size": 16}, {"name": "normalize"}]},
        "eval": {"image": [{"name": "resize", "size": 16}, {"name": "normalize"}]}}


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def shapes_keys(tmp_path_factory) -> Dict[str, set]:
    """Sample keys of the shapes set, per kind: what every task already reads."""
    cache = str(tmp_path_factory.mktemp("shapes"))
    out = {}
    for kind, split, name in (("caption", "train", "caption_train"), ("caption", "val", "caption_eval"),
                              ("vqa", "val", "vqa"), ("retrieval", "val", "retrieval")):
        b = DATASETS.get("shapes")("s", annotations=kind, cache_dir=cache, image_size=16,
                                   num_images={"train": 4, "val": 4}, processors=PROC)
        b.prepare([split])
        out[name] = set(b.build(split)[0])
    return out


def _build(name: str, split: str, **args: Any):
    builder = DATASETS.get(name)("entry", processors=PROC, **args)
    builder.prepare([split])  # every listed file exists
    return builder.build(split)


def _karpathy(root: Path, images: List[tuple]) -> Dict[str, Any]:
    return {"dataset": "coco", "images": [
        {"filepath": folder, "filename": fn, "imgid": i, "split": split, "cocoid": cid,
         "sentences": [{"raw": f"caption {k} of {cid}.", "tokens": []} for k in range(5)], "sentids": []}
        for i, (folder, fn, split, cid) in enumerate(images)]}


def test_coco_karpathy_caption_and_retrieval(tmp_path: Path, shapes_keys) -> None:
    images = [("val2014", "COCO_val2014_000000000001.jpg", "test", 1), ("train2014", "COCO_train2014_000000000002.jpg",
              "train", 2), ("val2014", "COCO_val2014_000000000003.jpg", "restval", 3)]
    for k, (folder, fn, _, _) in enumerate(images):
        _jpg(tmp_path / folder / fn, k)
    _dump(tmp_path / "dataset_coco.json", _karpathy(tmp_path, images))
    train = _build("coco_karpathy", "train", root=str(tmp_path), annotations="caption")
    assert len(train) == 10 and set(train[0]) == shapes_keys["caption_train"]  # train + restval, 5 captions each
    test = _build("coco_karpathy", "test", root=str(tmp_path), annotations="caption")
    assert len(test) == 1 and set(test[0]) == shapes_keys["caption_eval"] and len(test[0]["captions"]) == 5
    ret = _build("coco_karpathy", "test", root=str(tmp_path), annotations="retrieval")
    assert set(ret[0]) == shapes_keys["retrieval"] and len(ret.texts) == 5 and ret.img2txt == [[0, 1, 2, 3, 4]]


def test_flickr30k(tmp_path: Path, shapes_keys) -> None:
    images = [("", "100.jpg", "test", None), ("", "200.jpg", "train", None)]
    for k, (_, fn, _, _) in enumerate(images):
        _jpg(tmp_path / "flickr30k-images" / fn, k)
    data = _karpathy(tmp_path, images)
    for im in data["images"]:  # Flickr's file has no filepath and no cocoid
        del im["filepath"], im["cocoid"]
    _dump(tmp_path / "dataset_flickr30k.json", data)
    ret = _build("flickr30k", "test", root=str(tmp_path))
    assert len(ret) == 1 and set(ret[0]) == shapes_keys["retrieval"] and ret[0]["image_id"] == 0


def test_nocaps_val_carries_the_domain(tmp_path: Path, shapes_keys) -> None:
    _jpg(tmp_path / "images" / "0013ea2087020901.jpg", 0)
    _dump(tmp_path / "nocaps_val_4500_captions.json", {
        "licenses": [], "info": {},
        "images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "height": 20, "width": 24, "domain": "out-domain",
                    "open_images_id": "0013ea2087020901"}],
        "annotations": [{"image_id": 0, "id": k, "caption": f"caption {k}"} for k in range(10)]})
    val = _build("nocaps", "val", root=str(tmp_path))
    assert set(val[0]) == shapes_keys["caption_eval"] | {"domain"} and val[0]["domain"] == "out-domain"
    assert len(val[0]["captions"]) == 10


def _vqa_files(root: Path, questions: str, answers: str, subset: str) -> None:
    _jpg(root / subset / f"COCO_{subset}_000000000042.jpg", 0)
    _dump(root / questions, {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subset,
                             "questions": [{"image_id": 42, "question": "What color is the cat?",
                                            "question_id": 420}]})
    _dump(root / answers, {"info": {}, "annotations": [{
        "question_id": 420, "image_id": 42, "question_type": "what color is", "answer_type": "other",
        "multiple_choice_answer": "black",
        "answers": [{"answer": "black", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}]})


@pytest.mark.parametrize("name, questions, answers", [
    ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"),
    ("okvqa", "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json"),
])
def test_vqav2_format_sets(tmp_path: Path, shapes_keys, name: str, questions: str, answers: str) -> None:
    _vqa_files(tmp_path, questions, answers, "val2014")
    val = _build(name, "val", root=str(tmp_path))
    assert set(val[0]) == shapes_keys["vqa"]
    assert (val[0]["question_id"], val[0]["answers"][0], val[0]["answer_type"]) == (420, "black", "other")


def test_vqav2_test_dev_has_questions_only(tmp_path: Path) -> None:
    _jpg(tmp_path / "test2015" / "COCO_test2015_000000000007.jpg", 0)
    _dump(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
          {"questions": [{"image_id": 7, "question": "Is it raining?", "question_id": 70}]})
    test = _build("vqav2", "test-dev", root=str(tmp_path))
    assert test[0]["answers"] == [] and test[0]["question"] == "Is it raining?"


def test_gqa_balanced_questions(tmp_path: Path, shapes_keys) -> None:
    _jpg(tmp_path / "images" / "n161313.jpg", 0)
    _dump(tmp_path / "questions" / "testdev_balanced_questions.json", {
        "20968379": {"imageId": "n161313", "question": "Is the tray on the right?", "answer": "no",
                     "fullAnswer": "No, the tray is on the left.", "types": {}, "semantic": [], "isBalanced": True}})
    test = _build("gqa", "test-dev", root=str(tmp_path))
    assert set(test[0]) == shapes_keys["vqa"] and test[0]["answers"] == ["no"]


def test_visual_genome_region_captions(tmp_path: Path, shapes_keys) -> None:
    _jpg(tmp_path / "VG_100K_2" / "1.jpg", 0)
    _dump(tmp_path / "image_data.json", [{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg",
                                          "width": 24, "height": 20, "coco_id": None, "flickr_id": None}])
    _dump(tmp_path / "region_descriptions.json", [{"id": 1, "regions": [
        {"region_id": k, "image_id": 1, "phrase": f"phrase {k}", "x": 0, "y": 0, "width": 5, "height": 5}
        for k in range(3)]}])
    train = _build("vg_caption", "train", root=str(tmp_path))
    assert len(train) == 3 and set(train[0]) == shapes_keys["caption_train"] and train[0]["text_input"] == "phrase 0"


def test_a_missing_file_names_file_entry_and_source(tmp_path: Path) -> None:
    from framework.core.errors import MissingDataError

    builder = DATASETS.get("vqav2")("vqav2", root=str(tmp_path))
    with pytest.raises(MissingDataError, match=r"v2_OpenEnded_mscoco_val2014_questions.json(.|\n)*visualqa.org"):
        builder.prepare(["val"])


@pytest.mark.parametrize("entry, split", [("coco_caption", "val"), ("coco_retrieval", "test"), ("flickr30k", "test"),
                                          ("nocaps", "val"), ("vqav2", "val"), ("okvqa", "val"),
                                          ("gqa", "test-dev"), ("vg_caption", "train"), ("vg_vqa", "train")])
def test_datasets_cfg_entries_validate_and_list_their_files(tmp_path: Path, entry: str, split: str, capsys) -> None:
    from helpers import toy_config, write_yaml

    from framework.commands.train import main as train_main

    cfg = toy_config(tmp_path / "out")
    cfg["datasets"] = {entry: {"root": str(tmp_path / "nothing")}}
    cfg["run"].update(train_splits=[split] if split == "train" else [], eval_splits=[] if split == "train" else [split])
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[MISSING] {entry}: " in out and str(tmp_path / "nothing") in out


def test_visual_genome_question_answers(tmp_path: Path, shapes_keys) -> None:
    _jpg(tmp_path / "VG_100K" / "7.jpg", 0)
    _dump(tmp_path / "image_data.json", [{"image_id": 7, "url": "https://cs.stanford.edu/people/rak248/VG_100K/7.jpg",
                                          "width": 24, "height": 20, "coco_id": None, "flickr_id": None}])
    _dump(tmp_path / "question_answers.json", [{"id": 7, "qas": [
        {"a_objects": [], "question": "What color is the clock?", "image_id": 7, "qa_id": 986768,
         "answer": "Green.", "q_objects": []},
        {"a_objects": [], "question": "Where?", "image_id": 7, "qa_id": 986769, "answer": " . ", "q_objects": []}]}])
    builder = DATASETS.get("vg_vqa")("vg_vqa", root=str(tmp_path), processors=PROC)
    assert builder.has_split("train") and not builder.has_split("val")
    train = builder.build("train")
    assert len(train) == 1 and set(train[0]) == shapes_keys["vqa"]  # the answerless pair is left out
    assert train[0]["answers"] == ["green"] and train[0]["question"] == "What color is the clock?"
