"""The LLaMA family and InstructBLIP on our side: the tokenizer contract (what LAVIS's Blip2VicunaInstruct sets, and
the errors a wrong one gets), stage 2 over a tiny Vicuna (the instruction through the Q-Former), left-padded batch
generation equal to one-at-a-time generation, and answers ranked among candidates (model, task, Python API)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import stage2_config, write_yaml
from tiny_llms import make_tiny_vicuna

from framework.api import Model
from framework.core.errors import ConfigError
from framework.core.registry import LLMS
from framework.engine.experiment import load_experiment
from framework.models.build import build_model

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
INSTRUCTIONS = ["What color is the circle?", "What color is the square?", "Describe the picture."]
OUTPUTS = ["red", "blue", "a green triangle on the left"]


@pytest.fixture(scope="module")
def vicuna(tmp_path_factory) -> Path:
    """A Vicuna folder as lmsys ships it: no pad token (the adapter adds LAVIS's "[PAD]")."""
    return make_tiny_vicuna(tmp_path_factory.mktemp("llm") / "vicuna", pad=False)


def test_the_contract_is_lavis_s_and_a_wrong_one_is_named(vicuna: Path) -> None:
    adapter = LLMS.get("llama")(path=str(vicuna), precision="fp32")
    tok = adapter.tokenizer
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("[PAD]", "</s>", "</s>", "</s>")
    assert tok("red")["input_ids"][0] == tok.convert_tokens_to_ids("</s>") == 2  # LAVIS's texts start with </s>
    rows = adapter.model.get_input_embeddings().weight
    assert rows.shape[0] == len(tok) == 401 and tok.pad_token_id == 400
    # the added row is the mean of the others: no random draw, so a run's other random numbers stay as they were
    torch.testing.assert_close(rows[400], rows[:400].mean(0), rtol=0, atol=0)
    head = adapter.model.get_output_embeddings().weight
    torch.testing.assert_close(head[400], head[:400].mean(0), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"model.llm.special_tokens.eos_token: '<eot>' is no token the model in "
                                          r".* has learnt \(not among its 400 token rows\), so it would never end a text"):
        LLMS.get("llama")(path=str(vicuna), precision="fp32", special_tokens={"eos_token": "<eot>"})
    with pytest.raises(ConfigError, match=r"model.llm.special_tokens: unknown key 'eos'; the keys: pad_token, "
                                          r"bos_token, eos_token, unk_token"):
        LLMS.get("llama")(path=str(vicuna), precision="fp32", special_tokens={"eos": "</s>"})
    own = LLMS.get("llama")(path=str(vicuna), precision="fp32", special_tokens={})  # the tokenizer's own
    assert own.tokenizer("red")["input_ids"][0] == 1 and own.tokenizer.pad_token == "</s>"


def test_the_output_layout_is_lavis_s_concat_text_input_output(vicuna: Path) -> None:
    """Instruction (start token, cut keeping its end), then output + end of text (cut keeping its start, the start
    token LAVIS tokenises it with counted); loss on the output's tokens only."""
    adapter = LLMS.get("llama")(path=str(vicuna), precision="fp32", max_txt_len=4, max_output_txt_len=3)
    tok = adapter.tokenizer
    rows = adapter._token_rows(["What color is the circle?"], ["a green triangle"])
    ids, no_loss = rows[0]
    instruction = tok("What color is the circle?")["input_ids"]
    assert ids[:no_loss] == [2] + instruction[-3:]  # the start token and the instruction's last 3 tokens
    assert ids[no_loss:] == tok("a green triangle</s>", add_special_tokens=False)["input_ids"][:2]


def test_stage2_over_vicuna_trains_and_batched_generation_equals_one_at_a_time(tmp_path: Path, vicuna: Path) -> None:
    cfg = stage2_config(tmp_path, tmp_path / "out", "flant5")  # the tiny parts around the LLM
    cfg["model"]["llm"] = {"name": "llama", "path": str(vicuna), "precision": "fp32", "max_txt_len": 16}
    cfg["model"] |= {"qformer_text_input": True, "max_txt_len": 16}
    model = build_model(load_experiment(str(write_yaml(tmp_path / "v.yaml", cfg))).model)
    assert model.qformer.word_embeddings is not None  # InstructBLIP's Q-Former reads the instruction
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model({"image": IMAGES, "prompt": INSTRUCTIONS, "text_input": OUTPUTS})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # one fixed batch: the loss falls at every step
    model.eval()
    decoding = dict(num_beams=3, max_new_tokens=6, min_length=1, repetition_penalty=1.5)
    batched = model.generate(IMAGES, INSTRUCTIONS, **decoding)  # left-padded: the instructions differ in length
    alone = [model.generate(IMAGES[i:i + 1], INSTRUCTIONS[i:i + 1], **decoding)[0] for i in range(len(IMAGES))]
    assert batched == alone and any(batched)
    print("generated:", batched)


def test_answers_are_ranked_by_the_model_the_vqa_task_and_the_api(tmp_path: Path, vicuna: Path) -> None:
    from plugins.tasks.vqa import VQA

    cfg = stage2_config(tmp_path, tmp_path / "out", "flant5")
    cfg["model"]["llm"] = {"name": "llama", "path": str(vicuna), "precision": "fp32"}
    cfg["model"]["qformer_text_input"] = True
    model = build_model(load_experiment(str(write_yaml(tmp_path / "v.yaml", cfg))).model).eval()
    candidates = ["red", "green", "blue", "a yellow square"]
    questions = ["what color is the circle?", "what color is the square?", "what is on the left?"]
    prompts = [f"Question: {q} Answer:" for q in questions]
    order = model.rank_answers(IMAGES, prompts, candidates, n_segments=2)
    with torch.no_grad():
        scores = model.llm.candidate_losses(model.visual_prompt(IMAGES, prompts), prompts, candidates, 2)
    assert order == scores.argsort(dim=-1).tolist() and all(sorted(row) == [0, 1, 2, 3] for row in order)

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(candidates))
    task = VQA(answer_list=str(answers), n_segments=2)
    loader = [{"image": IMAGES, "question": questions, "question_id": torch.arange(3),
               "answers": [["red"] * 10, ["blue"] * 10, ["green"] * 10]}]
    result = task.evaluate(model, loader, tmp_path / "pred.json")
    predicted = [p["answer"] for p in json.loads((tmp_path / "pred.json").read_text())]
    assert predicted == [candidates[row[0]] for row in order]
    assert result["accuracy"] == pytest.approx(100.0 * sum(p == g for p, g in zip(predicted, ["red", "blue", "green"]))
                                               / 3)

    api = Model(model, lambda image: torch.zeros(3, 32, 32), torch.device("cpu"))
    ranked = api.rank_answers(IMAGES, questions, candidates, n_segments=2)
    assert ranked == [[candidates[j] for j in row] for row in order]
    per_question = api.rank_answers(IMAGES, questions, [candidates[:2], candidates[1:], candidates])
    assert [sorted(r) for r in per_question] == [sorted(candidates[:2]), sorted(candidates[1:]), sorted(candidates)]
    with pytest.raises(ConfigError, match=r"rank_answers: 3 images but 2 candidate lists"):
        api.rank_answers(IMAGES, questions, [candidates, candidates])


def test_a_bad_answer_list_is_named(tmp_path: Path) -> None:
    from plugins.tasks.vqa import VQA

    with pytest.raises(ConfigError, match=r"task.answer_list: .*missing.json does not exist"):
        VQA(answer_list=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"red": 1}')
    with pytest.raises(ConfigError, match=r"must hold a non-empty list of non-empty strings"):
        VQA(answer_list=str(tmp_path / "bad.json"))
    (tmp_path / "two.json").write_text('["red", "blue"]')
    with pytest.raises(ConfigError, match=r"task.n_segments=3: give 1 to the number of candidates \(2 in"):
        VQA(answer_list=str(tmp_path / "two.json"), n_segments=3)


def test_instructblip_from_blip2_weights_takes_its_text_path_from_stage1_and_says_so(tmp_path: Path, caplog) -> None:
    """LAVIS's BLIP-2 stage-2 checkpoints hold no Q-Former text path (its stage-2 model deletes it); InstructBLIP
    needs one. Started from such a checkpoint (here one LAVIS wrote, converted) with a stage-1 checkpoint, the
    text path is stage 1's, everything else the stage-2 checkpoint's, and the log says which parts kept what."""
    import logging

    from helpers import stage1_config

    from framework.commands.convert import main as convert_main
    from framework.core import checkpoint
    from framework.models.build import checkpoint_of

    torch.manual_seed(1)
    stage1_spec = load_experiment(str(write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path)))).model
    stage1 = build_model(stage1_spec)
    checkpoint.save_atomic(checkpoint_of(stage1, "blip2_qformer", iter=1), tmp_path / "stage1.pt")
    cfg = stage2_config(tmp_path, tmp_path / "out", "opt")
    torch.manual_seed(2)
    blip2 = build_model(load_experiment(str(write_yaml(tmp_path / "s2.yaml", cfg))).model)
    with torch.no_grad():  # as trained in stage 2: none of its weights is stage 1's any more
        for p in blip2.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    checkpoint.save_atomic(checkpoint_of(blip2, "blip2_generative", iter=1), tmp_path / "stage2.pt")
    cfg["model"]["checkpoint"] = str(tmp_path / "stage2.pt")
    assert convert_main(["--from", "ours", "--to", "lavis", "--src", str(write_yaml(tmp_path / "e.yaml", cfg)),
                         "--out", str(tmp_path / "lavis")]) == 0  # the file LAVIS's Blip2OPT writes
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis" / "model.pth"),
                         "--out", str(tmp_path / "conv"), "--options", "model.qformer.num_heads=4",
                         "model.image_encoder.heads=4"]) == 0
    converted = checkpoint.load(tmp_path / "conv" / "model.pt")
    assert "qformer.word_embeddings." in converted["absent"] and "qformer.layers.1.ffn_text." in converted["absent"]

    cfg["model"] |= {"qformer_text_input": True, "stage1_checkpoint": str(tmp_path / "stage1.pt"),
                     "checkpoint": str(tmp_path / "conv" / "model.pt")}
    with caplog.at_level(logging.INFO, logger="framework"):
        instruct = build_model(load_experiment(str(write_yaml(tmp_path / "i.yaml", cfg))).model)
    ours, s1, s2 = instruct.state_dict(), stage1.state_dict(), blip2.state_dict()
    for key in ("qformer.word_embeddings.weight", "qformer.layers.0.ffn_text.fc1.weight"):
        assert torch.equal(ours[key], s1[key]), key  # the text path: stage 1's
    for key in ("qformer.layers.0.ffn_query.fc1.weight", "qformer.query_tokens", "llm_proj.weight"):
        assert torch.equal(ours[key], s2[key]), key  # the rest: the BLIP-2 stage-2 checkpoint's
    assert not torch.equal(s1["qformer.layers.0.ffn_query.fc1.weight"], s2["qformer.layers.0.ffn_query.fc1.weight"])
    assert "were not in the model that wrote it; they keep the weights they were built with" in caplog.text
    assert "Q-Former and ln_vision from stage-1 checkpoint" in caplog.text
