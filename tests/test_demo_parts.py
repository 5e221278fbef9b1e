"""The demo's own parts: the tiny LLM it builds is an ordinary Hugging Face folder the ``opt`` adapter reads."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import REPO
from framework.registry import LLMS
from run_scripts.tiny_llm import main as tiny_llm_main


def test_tiny_llm_is_a_hugging_face_opt_the_adapter_loads(tmp_path: Path) -> None:
    folder = tmp_path / "tiny_opt"
    options = [f"model.llm.path={folder}", "datasets.shapes_caption.num_images={train: 30, val: 5}"]
    cfg = str(REPO / "projects" / "blip2" / "demo" / "stage2_shapes.yaml")
    assert tiny_llm_main(["--cfg", cfg, "--steps", "30", "--options", *options]) == 0
    record = json.loads((folder / "training.json").read_text())
    assert record["final_loss"] < record["first_loss"] and record["texts"] > 30 * 5
    adapter = LLMS.get("opt")(path=str(folder), precision="fp32", end_of_text="</s>")  # as the demo config
    text = "question: how many shapes are there? answer: 2"
    ids = adapter.tokenizer(text)["input_ids"]
    assert ids[0] == adapter.tokenizer.eos_token_id and adapter.tokenizer.unk_token_id not in ids  # </s> first
    decoded = adapter.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "question : how many shapes are there ? answer : 2"
    loss = adapter.lm_loss(torch.zeros(1, 2, adapter.hidden_size), ["question: how many shapes are there? answer:"],
                           ["2"])
    assert torch.isfinite(loss)
    # an existing folder is kept
    assert tiny_llm_main(["--cfg", cfg, "--options", *options]) == 0
    assert json.loads((folder / "training.json").read_text()) == record


def test_tiny_t5_puts_description_and_prompt_in_the_encoder(tmp_path: Path) -> None:
    from run_scripts.tiny_llm import encode, word_tokenizer

    folder = tmp_path / "tiny_t5"
    cfg = str(REPO / "projects" / "blip2" / "demo" / "stage2_shapes_t5.yaml")
    options = [f"model.llm.path={folder}", "datasets.shapes_caption.num_images={train: 30, val: 5}"]
    assert tiny_llm_main(["--cfg", cfg, "--steps", "30", "--options", *options]) == 0
    adapter = LLMS.get("flant5")(path=str(folder), precision="fp32")
    assert adapter.model.config.model_type == "t5" and adapter.tokenizer("red")["input_ids"][-1] == 1  # ends </s>
    loss = adapter.lm_loss(torch.zeros(1, 2, adapter.hidden_size), ["question: how many shapes are there? answer:"],
                           ["2"])
    assert torch.isfinite(loss)
    tok = word_tokenizer(["a red circle a photo of two shapes"], decoder_only=False)
    (inputs, target), = encode(tok, [("a red circle", "a photo of", "two shapes")], decoder_only=False)
    eos = tok.eos_token_id
    assert inputs.count(eos) == 2 and inputs[-1] == eos and target == tok("two shapes")["input_ids"]
