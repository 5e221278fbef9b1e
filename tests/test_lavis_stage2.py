"""Stage 2 against LAVIS itself: LAVIS's ``Blip2OPT`` at tiny sizes over an OPT as the released ones are (byte-level
BPE, texts ending with a newline, trained so that it does end them), its state_dict converted with
``framework.convert --from lavis``: the LM loss with an empty prompt and with "a photo of", the captions and the
VQA answers, as strings."""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import torch
from lavis_oracle import lavis_bert, run_lavis
from tiny_llms import make_tiny_opt_bpe

from framework.commands.convert import main as convert_main
from framework.commands.train import main as train_main
from framework.engine.experiment import load_model_file
from framework.models.build import build_model

CAPTIONS = ["a red circle on the left", "a blue square in the middle", "a green triangle to the left of",
            "a yellow circle on the right"]
QUESTIONS = ["what color is the circle?", "what color is the square?", "what color is the triangle?",
             "what color is the circle?"]
SPEC = dict(seed=0, perturb=0.05, num_query_tokens=4, max_txt_len=32, losses=["", "a photo of"],
            vision=dict(image_size=32, patch_size=8, width=48, depth=2, heads=4, mlp_dim=96),
            caption_decoding=dict(prompt="a photo of", num_beams=5, max_length=30, min_length=8),
            # LAVIS's Blip2OPT.predict_answers settings (later LAVIS; 1.0.2 has none): beam 5, 10 tokens, no length
            # penalty
            vqa_decoding=dict(prompt="Question: {} Answer:", num_beams=5, max_length=10, min_length=1,
                              length_penalty=0.0))


def test_opt_losses_captions_and_answers_equal_lavis(tmp_path: Path) -> None:
    work = tmp_path / "lavis"
    work.mkdir()
    lavis_bert(work)  # LAVIS builds its Q-Former from it; ours comes from the converted weights
    opt = make_tiny_opt_bpe(tmp_path / "opt")
    shutil.copytree(opt, work / "opt")
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lavis = run_lavis("opt", work, {**SPEC, "images": images, "captions": CAPTIONS, "questions": QUESTIONS})
    torch.save({"model": lavis["state_dict"]}, tmp_path / "lavis.pth")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", "model.image_encoder.heads=4", "model.qformer.num_heads=4",
                         "model.image_encoder.precision=fp32", f"model.llm.path={opt}",
                         "model.llm.precision=fp32"]) == 0
    ours = build_model(load_model_file(tmp_path / "conv" / "model.yaml", [
        "model.qformer.dropout=0.0", "model.qformer.attention_dropout=0.0"]))
    ours.train()
    with torch.no_grad():  # fp32, 2-layer encoder and Q-Former: the soft visual prompt, LAVIS's and ours
        torch.testing.assert_close(ours.visual_prompt(images, [""] * len(images)), lavis["prefix"], rtol=0, atol=1e-5)
    for prompt, expected in lavis["losses"].items():
        got = ours({"image": images, "text_input": CAPTIONS, "prompt": [prompt] * len(CAPTIONS)})["loss"]
        print(f"OPT loss, prompt {prompt!r}: ours {float(got.detach()):.7f}, LAVIS {float(expected):.7f}")
        assert abs(float(got.detach()) - float(expected)) < 1e-4, (prompt, float(expected))
    ours.eval()
    c, v = SPEC["caption_decoding"], SPEC["vqa_decoding"]
    # min_length as LAVIS counts it (with the prompt's tokens): the tasks' key, passed through as they pass it
    captions = ours.generate(images, [c["prompt"]] * len(images), num_beams=c["num_beams"],
                             max_new_tokens=c["max_length"], min_length=c["min_length"])
    assert captions == lavis["captions"] and all(captions)
    answers = [ours.generate(images[i:i + 1], [v["prompt"].format(q)], num_beams=v["num_beams"],
                             max_new_tokens=v["max_length"], length_penalty=v["length_penalty"],
                             min_length=v["min_length"])[0] for i, q in enumerate(QUESTIONS)]
    assert answers == lavis["answers"]
    print("LAVIS and ours:", captions, answers)


T5_SPEC = dict(seed=0, perturb=0.05, num_query_tokens=4, max_txt_len=32,
               vision=dict(image_size=32, patch_size=8, width=48, depth=2, heads=4, mlp_dim=96),
               caption_decoding=dict(prompt="a photo of", num_beams=5, max_length=30, min_length=8),
               # LAVIS's Blip2T5.predict_answers defaults, with its VQA prompt's shape
               vqa_decoding=dict(prompt="question : {} short answer :", num_beams=5, max_length=10, min_length=1,
                                 length_penalty=-1.0))


def test_flant5_loss_captions_and_answers_equal_lavis(tmp_path: Path) -> None:
    from tiny_llms import make_tiny_t5_trained

    work = tmp_path / "lavis"
    work.mkdir()
    lavis_bert(work)
    t5 = make_tiny_t5_trained(tmp_path / "t5")
    shutil.copytree(t5, work / "t5")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    questions = ["what color is the circle ?", "what color is the square ?", "what color is the triangle ?",
                 "what color is the circle ?"]
    prompts, targets = ["a photo of"] * 2 + ["question : what color is the circle ? short answer :"] * 2, \
        ["a red circle", "a blue square", "red", "green"]
    lavis = run_lavis("t5", work, {**T5_SPEC, "images": images, "questions": questions, "prompts": prompts,
                                   "targets": targets})
    assert lavis["dense_act_fn"] == "gelu"  # LAVIS's override of FlanT5's gelu_new
    torch.save({"model": lavis["state_dict"]}, tmp_path / "lavis.pth")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", "model.image_encoder.heads=4", "model.qformer.num_heads=4",
                         "model.image_encoder.precision=fp32", f"model.llm.path={t5}", "model.llm.precision=fp32"]) == 0
    ours = build_model(load_model_file(tmp_path / "conv" / "model.yaml", [
        "model.qformer.dropout=0.0", "model.qformer.attention_dropout=0.0"]))
    assert ours.llm.model.config.dense_act_fn == "gelu"
    ours.train()
    got = ours({"image": images, "text_input": targets, "prompt": prompts})["loss"]
    print(f"FlanT5 loss: ours {float(got.detach()):.7f}, LAVIS {float(lavis['loss']):.7f}")
    assert abs(float(got.detach()) - float(lavis["loss"])) < 1e-4, float(lavis["loss"])
    ours.eval()
    c, v = T5_SPEC["caption_decoding"], T5_SPEC["vqa_decoding"]
    captions = ours.generate(images, [c["prompt"]] * 4, num_beams=c["num_beams"], max_new_tokens=c["max_length"],
                             min_length=c["min_length"])
    assert captions == lavis["captions"] and all(captions)
    answers = ours.generate(images, [v["prompt"].format(q) for q in questions], num_beams=v["num_beams"],
                            max_new_tokens=v["max_length"], min_length=v["min_length"],
                            length_penalty=v["length_penalty"])
    assert answers == lavis["answers"] and all(answers)
    print("LAVIS and ours:", captions, answers)


def _reseed(seed: int, module: torch.nn.Module, args: tuple) -> None:
    torch.manual_seed(seed)  # a forward pre-hook: returns None, so the layer's inputs stay as they are


def test_a_training_step_through_our_runner_equals_lavis_model_train(tmp_path: Path, monkeypatch) -> None:
    """Not the model alone: ``framework.train``'s own first step (the mode its runner puts the model in, the batch
    its loader makes) against LAVIS's ``model.train()`` step on that batch, with the frozen OPT's dropout (0.1)
    active on both sides. Each OPT decoder layer is re-seeded on entry on both sides, so the masks line up; a
    runner that froze the LLM into eval mode gives LAVIS's eval-mode loss instead, which the test tells apart."""
    from helpers import read_log, write_yaml

    import framework.engine.runner

    work = tmp_path / "lavis"
    work.mkdir()
    lavis_bert(work)
    opt = make_tiny_opt_bpe(tmp_path / "opt", dropout=0.1)
    shutil.copytree(opt, work / "opt")
    spec = {**SPEC, "layer_seed": 1234}
    torch.save({"model": run_lavis("opt_step", work, spec)["state_dict"]}, tmp_path / "lavis.pth")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", "model.image_encoder.heads=4", "model.qformer.num_heads=4",
                         "model.image_encoder.precision=fp32", f"model.llm.path={opt}",
                         "model.llm.precision=fp32"]) == 0

    seen = {}
    build = framework.engine.runner.build_model

    def keep_first_batch(module: torch.nn.Module, args: tuple) -> None:
        batch = args[0]
        seen.setdefault("batch", {"image": batch["image"].clone(), "text_input": list(batch["text_input"]),
                                  "prompt": batch["prompt"][0]})

    def build_and_watch(model_spec):
        model = build(model_spec)
        model.register_forward_pre_hook(keep_first_batch)
        for i, layer in enumerate(model.llm.model.model.decoder.layers):
            layer.register_forward_pre_hook(partial(_reseed, spec["layer_seed"] + i))
        return model

    monkeypatch.setattr(framework.engine.runner, "build_model", build_and_watch)
    processing = {"image": [{"name": "resize", "size": 32}, {"name": "normalize"}]}
    cfg = {"_base_": str(tmp_path / "conv" / "model.yaml"),
           # LAVIS's tiny BERT has no dropout (lavis_bert): the only randomness left is the frozen OPT's
           "model": {"qformer": {"dropout": 0.0, "attention_dropout": 0.0}},
           "task": {"name": "captioning", "prompt": "a photo of"},
           "datasets": {"shapes_caption": {"image_size": 32, "num_images": {"train": 4},
                                           "processors": {"train": processing, "eval": processing}}},
           "run": {"output_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 4, "max_iters": 1,
                   "eval_splits": [], "log_every": 1, "tensorboard": False}}
    assert train_main(["--cfg", str(write_yaml(tmp_path / "run.yaml", cfg))]) == 0
    ours = read_log(tmp_path / "run")[0]["loss"]
    lavis = run_lavis("opt_step", work, {**spec, "batch": seen["batch"]})
    print(f"training step: ours {ours:.7f}, LAVIS model.train() {float(lavis['loss_train']):.7f}, "
          f"LAVIS with the OPT in eval mode {float(lavis['loss_llm_eval']):.7f}")
    # fp32, the same masks: the two implementations' rounding (the model-level comparison above holds 1e-4)
    assert abs(ours - float(lavis["loss_train"])) < 1e-4
    assert abs(float(lavis["loss_train"]) - float(lavis["loss_llm_eval"])) > 1e-2  # the dropout shows
