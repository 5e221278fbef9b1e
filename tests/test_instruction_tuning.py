"""Instruction tuning on one's own data: ``records`` of kind ``instruction``, instruction templates as processors,
several instruction sets mixed by ``sample_ratio``, the ``instruction`` task (train, evaluate, predictions), and
OCR tokens in VQA prompts (LAVIS's InstructBLIP TextVQA prompt)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from helpers import read_log, stage2_config, write_yaml
from PIL import Image

from framework.commands.train import main as train_main
from framework.core.errors import ConfigError
from framework.core.registry import DATASETS, build

TEMPLATES = ["Question: {} Short answer:", "Given the image, answer: {}", "{} A short answer:"]


def _records(folder: Path, name: str, records: List[dict]) -> Path:
    """Images (a colour each) and a JSON-lines file of ``records`` whose "image" is the image's index."""
    rng = np.random.default_rng(len(name))
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for r in records:
        path = folder / "imgs" / f"{r['image']}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        r["image"] = f"imgs/{r['image']}.png"
    out = folder / name
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_instruction_records_give_one_training_sample_per_output_and_every_output_as_references(tmp_path: Path):
    data = _records(tmp_path, "i.jsonl", [
        {"image": 0, "instruction": "What colour is the circle?", "output": "red"},
        {"image": 1, "instruction": "Describe the image.", "outputs": ["a blue square", "a square in blue"]},
        {"image": 2, "instruction": "", "output": "empty instruction"},  # bad: counted, named, skipped
        {"image": 3, "instruction": "What shape?", "outputs": []},  # bad
    ])
    (tmp_path / "i.csv").write_text('image,instruction,output\nimgs/0.png,"What colour is the circle?",red\n')
    builder = DATASETS.get("records")("mine", kind="instruction", max_bad_fraction=0.5, image_size=32,
                                      files={"train": str(data), "val": str(data), "test": str(tmp_path / "i.csv")})
    train, val = builder.build("train"), builder.build("val")
    assert [(s["instruction"], s["text_output"], s["record_id"]) for s in train] == [
        ("What colour is the circle?", "red", 1), ("Describe the image.", "a blue square", 2),
        ("Describe the image.", "a square in blue", 2)]  # as written: no cleaning of instructions or outputs
    assert [s["outputs"] for s in val] == [["red"], ["a blue square", "a square in blue"]]
    assert set(val[0]) == {"image", "image_id", "index", "record_id", "instruction", "outputs"}
    assert val[0]["image"].shape == (3, 32, 32)  # the image defaults are kept beside the (empty) text ones
    csv = builder.build("test")[0]
    assert (csv["instruction"], csv["outputs"]) == ("What colour is the circle?", ["red"])


def test_templates_are_processors_drawn_per_sample_repeatably_and_a_bad_one_is_named(tmp_path: Path) -> None:
    data = _records(tmp_path, "i.jsonl", [{"image": i, "instruction": f"question {i}?", "output": "yes"}
                                          for i in range(12)])
    builder = DATASETS.get("records")("mine", kind="instruction", image_size=32, files={"train": str(data)},
                                      processors={"train": {"text": [{"name": "instruction_template",
                                                                       "templates": TEMPLATES}]}})
    train = builder.build("train")

    def draw(seed: int) -> List[str]:
        torch.manual_seed(seed)
        return [train[i]["instruction"] for i in range(len(train))]

    first = draw(0)
    assert first == draw(0)  # from torch's generator: the run's seeding repeats it
    assert all(any(t.format(f"question {i}?") == s for t in TEMPLATES) for i, s in enumerate(first))
    assert len({s.replace(f"question {i}?", "") for i, s in enumerate(first)}) == 3  # every template drawn
    assert train[0]["image"].shape == (3, 32, 32)  # templates given, the image pipeline is still the default
    for templates, match in (([], "templates is empty"), (["Answer:"], r"must hold '\{\}' once"),
                             (["Q: {question}"], r"'Q: \{question\}' is not a template .*KeyError")):
        with pytest.raises(ConfigError, match=match):
            build("processor", {"name": "instruction_template", "templates": templates})


def _experiment(tmp: Path) -> dict:
    """A tiny InstructBLIP (the instruction through the Q-Former, a tiny Vicuna) tuned on two instruction sets
    mixed 3:1, templates in training, one template in evaluation."""
    qa = _records(tmp, "qa.jsonl", [{"image": i, "instruction": f"What is shown in picture {i}?",
                                     "output": ["red", "blue"][i % 2]} for i in range(8)])
    describe = _records(tmp, "describe.jsonl", [{"image": 10 + i, "instruction": "Describe the image briefly.",
                                                 "output": "a picture of noise"} for i in range(4)])
    cfg = stage2_config(tmp, tmp / "out", "llama", qformer_text_input=True)
    cfg["task"] = {"name": "instruction", "max_new_tokens": 3, "num_beams": 2}
    processors = {"train": {"text": [{"name": "instruction_template", "templates": TEMPLATES}]},
                  "eval": {"text": [{"name": "instruction_template", "templates": TEMPLATES[:1]}]}}
    cfg["datasets"] = {
        "qa": {"builder": "records", "kind": "instruction", "image_size": 32, "sample_ratio": 3,
               "files": {"train": str(qa), "val": str(qa)}, "processors": processors},
        "describe": {"builder": "records", "kind": "instruction", "image_size": 32, "sample_ratio": 1,
                     "files": {"train": str(describe)}}}  # trains only: it has no val file
    cfg["run"].update(max_iters=4, batch_size=4, eval_every=4, log_every=1, seed=3)
    return cfg


@pytest.mark.slow
def test_two_instruction_sets_mixed_train_and_the_instruction_task_evaluates_them(tmp_path: Path) -> None:
    cfg = _experiment(tmp_path)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 0
    train = read_log(tmp_path / "out", "train")
    assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)
    evals = read_log(tmp_path / "out", "eval")
    assert set(evals[-1]) >= {"qa/val/accuracy"} and not any(k.startswith("describe/") for k in evals[-1])
    predictions = json.loads((tmp_path / "out" / "predictions" / "qa_val_iter4.json").read_text())
    assert [p["record_id"] for p in predictions] == list(range(1, 9))  # every record, by its line
    assert all(p["instruction"] == f"Question: What is shown in picture {i}? Short answer:"
               for i, p in enumerate(predictions))  # the evaluation split's one template
    accuracy = 100.0 * sum(p["output"] == ["red", "blue"][i % 2] for i, p in enumerate(predictions)) / 8
    assert evals[-1]["qa/val/accuracy"] == pytest.approx(accuracy)

    # the same config and seed: the same losses (the mixture's draws and the templates' included)
    cfg["run"]["output_dir"] = str(tmp_path / "again")
    assert train_main(["--cfg", str(write_yaml(tmp_path / "again.yaml", cfg))]) == 0
    assert [r["loss"] for r in read_log(tmp_path / "again", "train")] == [r["loss"] for r in train]


def test_the_instruction_task_on_data_without_instructions_is_named(tmp_path: Path) -> None:
    from plugins.tasks.instruction import Instruction

    with pytest.raises(ConfigError, match=r"the batch has no 'text_output' \(it has \['text_input'\]\); .*kind: "
                                          r"instruction"):
        Instruction().train_step(None, {"image": None, "text_input": ["a caption"]})


def test_ocr_tokens_go_into_the_vqa_prompt_as_lavis_puts_them(tmp_path: Path) -> None:
    from plugins.tasks.vqa import VQA

    data = _records(tmp_path, "qa.jsonl", [
        {"image": 0, "question": "what does the sign say?", "answer": "stop",
         "ocr_tokens": [f"w{i}" for i in range(40)]},
        {"image": 1, "question": "what colour is it?", "answer": "red"}])  # no tokens: an empty list
    builder = DATASETS.get("records")("mine", kind="vqa", image_size=32, files={"val": str(data)})
    samples = [builder.build("val")[i] for i in range(2)]
    batch = {"question": [s["question"] for s in samples], "ocr_tokens": [s["ocr_tokens"] for s in samples]}
    prompts = VQA(prompt_template="OCR tokens: {}. Question: {} Short answer:").prompts(batch)
    # LAVIS: ', '.join(ocr_tokens[:30])
    assert prompts[0] == f"OCR tokens: {', '.join(f'w{i}' for i in range(30))}. Question: what does the sign say? " \
                         f"Short answer:"
    assert prompts[1] == "OCR tokens: . Question: what colour is it? Short answer:"
    with pytest.raises(ConfigError, match=r"has 1 '\{\}' but the data has ocr_tokens: give two"):
        VQA(prompt_template="Question: {} Short answer:").prompts(batch)
    with pytest.raises(ConfigError, match=r"has 2 '\{\}' but the data has no ocr_tokens"):
        VQA(prompt_template="OCR tokens: {}. Question: {} Short answer:").prompts({"question": ["q?"]})
    bad = _records(tmp_path, "bad.jsonl", [{"image": 0, "question": "q?", "answer": "a", "ocr_tokens": "STOP"}])
    with pytest.raises(Exception, match=r"line 1: ocr_tokens is not a list of strings"):
        DATASETS.get("records")("mine", kind="vqa", image_size=32, files={"val": str(bad)}).build("val")


def test_few_shot_examples_go_before_a_sample_as_often_as_lavis_draws_them(tmp_path: Path) -> None:
    """Records' examples reach a FlanT5 InstructBLIP as LAVIS's few_shot_samples; the number per batch is drawn
    with LAVIS's weights (0 with 1 - few_shot_prob, else 1..N alike); an end-to-end run trains on them; a
    decoder-only LLM or too few examples are named. (Equality with LAVIS: tests/test_lavis_instruct.py.)"""
    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model

    records = [{"image": i, "instruction": f"What number is picture {i}?", "output": str(i),
                "examples": [{"image": f"imgs/{(i + 1) % 6}.png", "instruction": "What is it?"},
                             {"image": f"imgs/{(i + 2) % 6}.png", "instruction": "Describe it."}]} for i in range(6)]
    data = _records(tmp_path, "few.jsonl", records)
    bad = _records(tmp_path, "bad.jsonl", [{"image": 0, "instruction": "q?", "output": "a",
                                            "examples": [{"image": "imgs/0.png"}]}])
    with pytest.raises(Exception, match=r"line 1: examples\[0\] is not \{\"image\": PATH, \"instruction\": TEXT\}"):
        DATASETS.get("records")("mine", kind="instruction", image_size=32, files={"train": str(bad)}).build("train")
    sample = DATASETS.get("records")("mine", kind="instruction", image_size=32,
                                     files={"train": str(data)}).build("train")[0]
    assert sample["few_shot_samples"]["image"].shape == (2, 3, 32, 32)
    assert sample["few_shot_samples"]["text_input"] == ["What is it?", "Describe it."]

    cfg = stage2_config(tmp_path, tmp_path / "out", "flant5", qformer_text_input=True, num_few_shot_examples=2,
                        few_shot_prob=0.6)
    model = build_model(load_experiment(str(write_yaml(tmp_path / "m.yaml", cfg))).model)
    torch.manual_seed(0)
    counts = np.bincount([model.draw_few_shot() for _ in range(6000)], minlength=3) / 6000
    assert np.allclose(counts, [0.4, 0.3, 0.3], atol=0.02)  # binomial sd at 6000 draws: under 0.007
    with pytest.raises(ConfigError, match=r"sample 0 of the batch has 1 examples and 2 were drawn"):
        model.few_shot_context([{"image": torch.zeros(1, 3, 32, 32), "text_input": ["q"]}], 2, torch.device("cpu"))

    cfg["task"] = {"name": "instruction", "max_new_tokens": 3, "num_beams": 1}
    cfg["datasets"] = {"few": {"builder": "records", "kind": "instruction", "image_size": 32,
                               "files": {"train": str(data)}}}
    cfg["run"].update(max_iters=3, batch_size=3, log_every=1, eval_splits=[])
    assert train_main(["--cfg", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 0
    assert len(read_log(tmp_path / "out", "train")) == 3

    cfg = stage2_config(tmp_path, tmp_path / "out2", "opt", num_few_shot_examples=2, few_shot_prob=0.5)
    with pytest.raises(ConfigError, match=r"model.few_shot_prob=0.5 needs .* an encoder-decoder LLM such as flant5"):
        build_model(load_experiment(str(write_yaml(tmp_path / "o.yaml", cfg))).model)
