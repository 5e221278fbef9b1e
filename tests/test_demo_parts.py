"""The demo's own parts: the tiny LLM it builds (an ordinary Hugging Face folder the ``opt`` adapter reads, and
what it answers reading a true caption) and the stage-1 cross-attention diagnosis."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import REPO

from framework.core.registry import LLMS
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
    assert 0 < float(loss) < math.log(len(adapter.tokenizer))  # trained on such lines: better than a uniform guess
    # an existing folder is kept
    assert tiny_llm_main(["--cfg", cfg, "--options", *options]) == 0
    assert json.loads((folder / "training.json").read_text()) == record
    # --reading: the LLM's answers after a true caption and after nothing, per answer type
    assert tiny_llm_main(["--cfg", cfg, "--reading", "--options", *options]) == 0
    reading = json.loads((folder / "reading.json").read_text())
    assert list(reading) == ["true caption", "no description"]
    for accuracy in reading.values():
        assert {"all", "number", "other"} <= set(accuracy) and all(0 <= v <= 100 for v in accuracy.values())
    with pytest.raises(SystemExit, match="no LLM in"):
        tiny_llm_main(["--cfg", cfg, "--reading", "--options", *options[1:], f"model.llm.path={tmp_path / 'none'}"])


def test_tiny_t5_puts_description_and_prompt_in_the_encoder(tmp_path: Path) -> None:
    from run_scripts.tiny_llm import encode, word_tokenizer

    folder = tmp_path / "tiny_t5"
    cfg = str(REPO / "projects" / "blip2" / "demo" / "stage2_shapes_t5.yaml")
    options = [f"model.llm.path={folder}", "datasets.shapes_caption.num_images={train: 30, val: 5}"]
    assert tiny_llm_main(["--cfg", cfg, "--steps", "30", "--options", *options]) == 0
    adapter = LLMS.get("flant5")(path=str(folder), precision="fp32")
    assert adapter.model.config.model_type == "t5" and adapter.tokenizer("red")["input_ids"][-1] == 1  # ends </s>
    prompt, prefix = "question: how many shapes are there? answer:", torch.zeros(1, 2, adapter.hidden_size)
    loss = adapter.lm_loss(prefix, [prompt], ["2"])
    # what transformers computes from the folder for [prefix, prompt] -> "2" </s>: the adapter reads it whole
    tok = adapter.tokenizer
    inputs = torch.cat([prefix[0], adapter.embed(torch.tensor(tok(prompt)["input_ids"]))])[None]
    expected = adapter.model(inputs_embeds=inputs, labels=torch.tensor(tok("2")["input_ids"])[None]).loss
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    tok = word_tokenizer(["a red circle a photo of two shapes"], decoder_only=False)
    (inputs, target), = encode(tok, [("a red circle", "a photo of", "two shapes")], decoder_only=False)
    eos = tok.eos_token_id
    assert inputs.count(eos) == 2 and inputs[-1] == eos and target == tok("two shapes")["input_ids"]


def test_cross_attention_diagnosis_records_every_step_of_every_cross_attention(tmp_path: Path) -> None:
    from helpers import stage1_config, write_yaml

    from run_scripts.cross_attention import main as diagnose

    cfg = write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "unused"))
    out = tmp_path / "diag"
    assert diagnose(["--cfg", str(cfg), "--steps", "3", "--out", str(out), "--runs", "paper=",
                     "both=model.qformer.cross_attention_freq=1"]) == 0
    results = json.loads((out / "cross_attention.json").read_text())
    assert {run: sorted(layers) for run, layers in results.items()} == {"paper": ["layer 0"],
                                                                        "both": ["layer 0", "layer 1"]}
    for layers in results.values():
        for s in layers.values():
            assert all(len(v) == 3 for v in s.values())  # one value per training step
            assert all(0.0 < e <= 1.0 + 1e-6 for e in s["entropy"])  # a fraction of ln(tokens)
            assert all(g > 0 for g in s["grad_cross"] + s["grad_self"])  # the losses reach both attentions
    assert (out / "cross_attention.png").stat().st_size > 10_000


def test_bert_vocab_keeps_the_tokens_the_shapes_text_uses_and_embeds_them_as_the_source(tmp_path: Path) -> None:
    """run_scripts/bert_vocab: an ordinary BERT folder the Q-Former loads, with only the tokens of the set's text;
    a text of the set embeds exactly as through the full vocabulary (the same rows, the same computation)."""
    from helpers import stage1_config, write_yaml
    from tiny_bert import vocab_size

    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model
    from run_scripts.bert_vocab import main as bert_vocab_main

    cfg = stage1_config(tmp_path, tmp_path / "out")
    source, cut = tmp_path / "bert", tmp_path / "cut"
    cfg["model"]["qformer"]["bert"] = str(cut)
    cfg["datasets"]["shapes_retrieval"]["num_images"] = {"train": 30, "val": 5}
    path = str(write_yaml(tmp_path / "s1.yaml", cfg))
    assert bert_vocab_main(["--cfg", path, "--source", str(source)]) == 0
    record = json.loads((cut / "vocabulary.json").read_text())
    assert record["vocab_size"] == vocab_size(cut) < record["source_vocab_size"] == vocab_size(source)
    vocab = (cut / "vocab.txt").read_text().split()
    assert vocab[0] == "[PAD]" and {"[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "triangle"} <= set(vocab)
    texts = ["a red triangle on the left, a blue circle in the middle", "how many squares are there?", "2"]

    def text_states(bert: Path) -> torch.Tensor:
        """The Q-Former's text path (BERT's weights; the projections after it start random)."""
        over = [f"model.qformer.bert={bert}", f"model.qformer.vocab_size={vocab_size(bert)}"]
        model = build_model(load_experiment(path, over).model).eval()
        ids, mask = model.tokenize(texts)
        assert model.tokenizer.unk_token_id not in ids.flatten().tolist()
        with torch.no_grad():
            return model.qformer("itc", input_ids=ids, text_mask=mask, with_queries=False).hidden

    # bit for bit: the same weights meet the same tokens in the same order of operations
    assert torch.equal(text_states(cut), text_states(source))
    # an existing folder is kept; the source is never the folder written
    stamp = (cut / "model.safetensors").stat().st_mtime_ns
    assert bert_vocab_main(["--cfg", path, "--source", str(source)]) == 0
    assert (cut / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="both"):
        bert_vocab_main(["--cfg", path, "--source", str(cut), "--force"])
    # --force rebuilds it in place, the same folder again, no temporary folder left beside it
    assert bert_vocab_main(["--cfg", path, "--source", str(source), "--force"]) == 0
    assert json.loads((cut / "vocabulary.json").read_text()) == record
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cut")) == ["cut"]


def test_the_optional_instruction_aware_variant_differs_from_its_baseline_only_in_the_qformer_input() -> None:
    """demo/instruct_shapes.yaml against demo/vqa_finetune_shapes.yaml (docs/results.md compares them): the same
    start, data, steps and seed; only the question through the Q-Former, and the stage-1 checkpoint for the text
    path that needs."""
    from framework.engine.experiment import load_experiment

    demo = REPO / "projects" / "blip2" / "demo"
    base, instruct = (load_experiment(str(demo / f)) for f in ("vqa_finetune_shapes.yaml", "instruct_shapes.yaml"))
    differ = {k for k in set(base.model) | set(instruct.model) if base.model.get(k) != instruct.model.get(k)}
    assert differ == {"qformer_text_input", "stage1_checkpoint"} and instruct.model["qformer_text_input"]
    assert base.task == instruct.task and base.datasets == instruct.datasets
    assert {k: v for k, v in vars(base.run).items() if k != "output_dir"} == \
           {k: v for k, v in vars(instruct.run).items() if k != "output_dir"}
