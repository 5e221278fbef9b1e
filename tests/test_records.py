"""Your own data without Python: JSON-lines / CSV records, bad rows skipped and named, too many stop the run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml
from helpers import read_log, stage2_config, write_yaml
from PIL import Image

from framework.commands.train import main as train_main
from framework.core.registry import DATASETS

WORDS = ["red", "green", "blue", "circle", "square", "triangle"]


def _images(folder: Path, n: int) -> List[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        names.append(f"imgs/{i}.png")
    return names


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pairs(tmp: Path, n: int, bad: int) -> Path:
    """``n`` records of which the first ``bad`` are bad in turn: a missing image, a truncated image, an empty
    caption."""
    names = _images(tmp / "imgs", n)
    rows = [{"image": name, "caption": f"a {WORDS[i % 3]} {WORDS[3 + i % 3]}"} for i, name in enumerate(names)]
    for i in range(bad):
        if i % 3 == 0:
            rows[i]["image"] = f"imgs/missing{i}.png"
        elif i % 3 == 1:
            _truncate(tmp / rows[i]["image"])
        else:
            rows[i]["caption"] = "  "
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _experiment(tmp: Path, data: Path) -> dict:
    cfg = stage2_config(tmp, tmp / "out")
    cfg["task"] = {"name": "captioning", "num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1}
    image = [{"name": "resize", "size": 32}, {"name": "normalize"}]
    cfg["datasets"] = {"mine": {"builder": "records", "kind": "caption", "files": {"train": str(data), "val": str(data)},
                                "processors": {"train": {"image": image}, "eval": {"image": image}}}}
    cfg["run"].update(max_iters=4, batch_size=8, eval_every=4)
    return cfg


@pytest.mark.slow
def test_fifty_pairs_with_three_bad_rows_train_and_evaluate_naming_the_skipped_rows(tmp_path: Path) -> None:
    data = _pairs(tmp_path, 50, bad=3)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", _experiment(tmp_path, data)))]) == 0
    log = (tmp_path / "out" / "train.log").read_text()
    assert "skipped 3 of 50 records" in log
    assert "line 1: image" in log and "missing0.png not found" in log
    assert "line 2: image" in log and "cannot be decoded" in log and "line 3: caption is empty" in log
    evals = read_log(tmp_path / "out", "eval")
    assert evals and "mine/val/cider" in evals[-1]
    preds = json.loads((tmp_path / "out" / "predictions" / "mine_val_iter4.json").read_text())
    assert len(preds) == 47  # one caption per good image


def test_sixty_percent_bad_rows_stop_before_training(tmp_path: Path, capsys) -> None:
    data = _pairs(tmp_path, 10, bad=6)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", _experiment(tmp_path, data)))]) == 2
    err = capsys.readouterr().err
    assert "6 of 10 records of" in err and "(60%, more than max_bad_fraction 0.1)" in err
    assert "raise datasets.mine.max_bad_fraction" in err
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained


def test_csv_and_jsonl_vqa_records_give_the_vqav2_sample(tmp_path: Path) -> None:
    names = _images(tmp_path / "imgs", 2)
    (tmp_path / "qa.csv").write_text("image,question,answers\n"
                                     f"{names[0]},what color is it?,red|red|dark red\n"
                                     f"{names[1]},how many?,2\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"image": names[0], "question": "what color is it?",
                                                   "answers": ["red", "red", "dark red"]}) + "\n"
                                       + json.dumps({"image": names[1], "question": "how many?", "answer": "2"}) + "\n")
    samples = []
    for name in ("qa.csv", "qa.jsonl"):
        builder = DATASETS.get("records")("mine", kind="vqa", files={"val": str(tmp_path / name)})
        samples.append([builder.build("val")[i] for i in range(2)])
    for csv_s, json_s in zip(*samples):
        assert {k: v for k, v in csv_s.items() if k not in ("image", "question_id")} == \
               {k: v for k, v in json_s.items() if k not in ("image", "question_id")}
    first = samples[1][0]
    assert set(first) == {"image", "image_id", "index", "question_id", "question", "answers", "answer_type"}
    assert first["answers"] == ["red", "red", "dark red"] and samples[1][1]["answers"] == ["2"] * 10


def test_a_split_no_entry_has_stops_the_run_naming_it(tmp_path: Path, capsys) -> None:
    """An entry may lack a split (it is then neither trained nor evaluated on it), but a run split that no entry
    has would train or evaluate on nothing: it stops the run before any model is built."""
    data = _pairs(tmp_path, 4, bad=0)
    cfg = _experiment(tmp_path, data)
    del cfg["datasets"]["mine"]["files"]["val"]
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "run.eval_splits: no datasets entry has the split(s) ['val'] (entries: ['mine'])" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_own_data_through_options_alone(tmp_path: Path) -> None:
    """The README's command: an existing config, the data given on the command line, no file edited."""
    data = _pairs(tmp_path, 12, bad=0)
    cfg = _experiment(tmp_path, data)
    cfg["datasets"] = {"shapes_caption": {"image_size": 32}}  # what the config file trains on
    # as the README writes it: no processors, the model's image size
    option = (f"datasets={{_delete_: true, mine: {{builder: records, kind: caption, image_size: 32,\n"
              f"                                   files: {{train: {data}, val: {data}}}}}}}")
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg)), "--options", option]) == 0
    assert "mine/val/cider" in read_log(tmp_path / "out", "eval")[-1]
    ran = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert list(ran["datasets"]) == ["mine"]  # the config's own data set was replaced, not added to
