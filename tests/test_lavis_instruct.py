"""InstructBLIP against LAVIS itself: LAVIS's ``Blip2VicunaInstruct`` and ``Blip2T5Instruct`` (its repository's
code, tests/lavis/instruct/) at tiny sizes, over a Vicuna as the released ones are (LLaMA architecture, a
SentencePiece tokenizer, "[PAD]" and "</s>" as LAVIS sets them), its state_dict converted with
``framework.convert --from lavis``: the LM loss of instructions and outputs (both cut: the instruction from its
start, the output from its end), the texts generated with beam search and with nucleus sampling, as strings, and
the answer candidates ranked by likelihood (``predict_class``, in two segments). The FlanT5 model likewise, over
the tiny trained T5 of the BLIP-2 oracle."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from lavis_oracle import lavis_bert, run_lavis
from tiny_llms import make_tiny_t5_trained, make_tiny_vicuna

from framework.commands.convert import main as convert_main
from framework.engine.experiment import load_model_file
from framework.models.build import build_model

INSTRUCTIONS = ["What color is the circle?",
                "Describe the image in a few words, please: the shapes, where they are and their colors.",
                "What color is the square?"]
OUTPUTS = ["red", "a red circle on the left and a blue square in the middle of the picture", "blue"]
# LAVIS's Blip2VicunaInstruct.generate defaults (beam 5, repetition penalty 1.5, length penalty 1, min length 1),
# 12 new tokens (its 256 would only make the test slow); nucleus sampling with its top_p
DECODINGS = {"beam": dict(num_beams=5, max_length=12, min_length=1, repetition_penalty=1.5, length_penalty=1),
             "nucleus": dict(use_nucleus_sampling=True, top_p=0.9, num_beams=1, max_length=12, min_length=1,
                             repetition_penalty=1.5)}
# max_txt_len 12 and max_output_txt_len 6 (LAVIS: 128, 256), so that both cuts happen
SPEC = dict(seed=0, perturb=0.05, num_query_tokens=4, max_txt_len=12, max_output_txt_len=6, sample_seed=3,
            vision=dict(image_size=32, patch_size=8, width=48, depth=2, heads=4, mlp_dim=96), decodings=DECODINGS,
            rank_prompt="Question: {} Answer:", questions=["what color is the circle?", "what color is the square?",
                                                           "what color is the triangle?"],
            candidates=["red", "green", "blue", "yellow", "purple"], n_segments=2)


def _ours_decoding(lavis: dict) -> dict:
    """LAVIS's generate arguments in our names, its max_length aside (:func:`_same_texts_and_ranks`)."""
    out = dict(num_beams=lavis["num_beams"], min_length=lavis["min_length"],
               repetition_penalty=lavis["repetition_penalty"])
    if lavis.get("use_nucleus_sampling"):
        out |= dict(do_sample=True, top_p=lavis["top_p"])
    else:
        out |= dict(length_penalty=float(lavis["length_penalty"]))
    return out


def _convert(tmp_path: Path, state: dict, bert: Path, llm: Path) -> dict:
    """LAVIS's state_dict through ``framework.convert --from lavis`` (heads and precisions of the tiny test
    models, the test's lengths); the model section it wrote."""
    torch.save({"model": state}, tmp_path / "lavis.pth")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", "model.image_encoder.heads=4",
                         "model.qformer.num_heads=4", "model.image_encoder.precision=fp32",
                         f"model.qformer.bert={bert}", f"model.llm.path={llm}", "model.llm.precision=fp32",
                         "model.max_txt_len=12", "model.llm.max_txt_len=12",
                         "model.llm.max_output_txt_len=6"]) == 0
    return yaml.safe_load((tmp_path / "conv" / "model.yaml").read_text())["model"]


def _same_texts_and_ranks(ours, lavis: dict, images: torch.Tensor, instructions: list, decodings: dict, spec: dict,
                          start_token_counted: bool) -> list:
    """Our texts for each of LAVIS's decodings (``start_token_counted``: its max_length counts the start token
    transformers puts first), and our candidate scores and ranks, equal to LAVIS's. Returns our ranks."""
    for name, decoding in decodings.items():
        torch.manual_seed(spec["sample_seed"])
        ours_decoding = _ours_decoding(decoding) | {
            "max_new_tokens": decoding["max_length"] - (1 if start_token_counted else 0)}
        texts = ours.generate(images, instructions, **ours_decoding)
        print(f"{name}: LAVIS {lavis['generated'][name]}, ours {texts}")
        assert texts == lavis["generated"][name] and any(texts)
    prompts = [spec["rank_prompt"].format(q) for q in spec["questions"]]
    with torch.no_grad():
        scores = ours.llm.candidate_losses(ours.visual_prompt(images, prompts), prompts, spec["candidates"],
                                           spec["n_segments"])
    # per-token negative log-likelihoods near 1-10, summed over a few tokens in fp32: 1e-5 is tens of units in the
    # last place; one token more or less in a candidate, or another divisor, moves a score by 1e-1
    torch.testing.assert_close(scores, lavis["scores"], rtol=0, atol=1e-5)
    ranks = ours.rank_answers(images, prompts, spec["candidates"], n_segments=spec["n_segments"])
    print(f"ranked: LAVIS {lavis['ranks'].tolist()}, ours {ranks}")
    assert ranks == lavis["ranks"].tolist()
    return ranks


def test_vicuna_instruct_converts_and_equals_lavis(tmp_path: Path) -> None:
    work = tmp_path / "lavis"
    work.mkdir()
    bert = lavis_bert(work)  # LAVIS's Q-Former tokenizer and ours: InstructBLIP's Q-Former reads the instruction
    vicuna = make_tiny_vicuna(tmp_path / "vicuna")
    shutil.copytree(vicuna, work / "vicuna")
    images = torch.randn(len(INSTRUCTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lavis = run_lavis("vicuna", work, {**SPEC, "images": images, "instructions": INSTRUCTIONS, "outputs": OUTPUTS})
    section = _convert(tmp_path, lavis["state_dict"], bert, vicuna)
    assert section["qformer_text_input"] is True and section["llm"]["name"] == "llama"
    ours = build_model(load_model_file(tmp_path / "conv" / "model.yaml", [
        "model.qformer.dropout=0.0", "model.qformer.attention_dropout=0.0"]))
    assert ours.llm.model.get_input_embeddings().weight.shape[0] == lavis["llm_vocab"] == 401
    ours.train()
    got = ours({"image": images, "text_input": OUTPUTS, "prompt": INSTRUCTIONS})["loss"]
    print(f"Vicuna InstructBLIP loss: ours {float(got.detach()):.7f}, LAVIS {float(lavis['loss']):.7f}")
    # fp32 throughout, a loss near 3: 1e-4 is some 30 units in the last place of fp32, far below any change in the
    # tokens, masks or weights (a single token more or less in the loss moves it by 1e-1)
    assert abs(float(got.detach()) - float(lavis["loss"])) < 1e-4
    ours.eval()
    ranks = _same_texts_and_ranks(ours, lavis, images, INSTRUCTIONS, DECODINGS, SPEC, start_token_counted=True)
    prompts = [SPEC["rank_prompt"].format(q) for q in SPEC["questions"]]
    per_image = ours.rank_answers(images, prompts, [SPEC["candidates"]] * len(images), n_segments=SPEC["n_segments"])
    assert per_image == ranks  # a list per image goes one image at a time: the same scores


T5_DECODINGS = {"beam": dict(num_beams=5, max_length=8, min_length=1, repetition_penalty=1.5, length_penalty=1.0),
                "nucleus": dict(use_nucleus_sampling=True, top_p=0.9, num_beams=1, max_length=8, min_length=1,
                                repetition_penalty=1.5)}
T5_INSTRUCTIONS = ["question : what color is the circle ? short answer :", "a photo of",
                   "a photo of two shapes and one circle and a red square , question : what color is the square ? "
                   "short answer :"]
T5_OUTPUTS = ["red", "a blue square and a green triangle and a red circle", "blue"]


def test_flant5_instruct_converts_and_equals_lavis(tmp_path: Path) -> None:
    """Blip2T5Instruct: the instruction cut keeping its end, the output keeping its start (max_txt_len 12,
    max_output_txt_len 6); generation's max_length is new tokens here (LAVIS passes max_new_tokens); ranking sums
    each candidate's token losses."""
    work = tmp_path / "lavis"
    work.mkdir()
    bert = lavis_bert(work)
    t5 = make_tiny_t5_trained(tmp_path / "t5")
    shutil.copytree(t5, work / "t5")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    spec = {**SPEC, "decodings": T5_DECODINGS, "rank_prompt": "question : {} short answer :",
            "questions": ["what color is the circle ?", "what color is the square ?", "what color is the triangle ?"],
            "candidates": ["red", "green", "blue", "a red circle", "two shapes"]}
    # two few-shot examples per sample (instructions of different lengths, one cut at max_txt_len 12)
    shots = {"num_few_shot_examples": 3, "few_shot_prob": 0.5, "k": 2,
             "images": torch.randn(3, 3, 3, 32, 32, generator=torch.Generator().manual_seed(4)),
             "texts": [["what is it ?", "describe the picture : its shapes , colors and where they are , please ."],
                       ["what color is the square ?", "how many ?"], ["is it red ?", "what shape ?"]]}
    lavis = run_lavis("t5_instruct", work, {**spec, "images": images, "instructions": T5_INSTRUCTIONS,
                                            "outputs": T5_OUTPUTS, "few_shot": shots})
    section = _convert(tmp_path, lavis["state_dict"], bert, t5)
    assert section["qformer_text_input"] is True and section["llm"]["name"] == "flant5"
    assert section["llm"]["prompt_keeps"] == "end"
    ours = build_model(load_model_file(tmp_path / "conv" / "model.yaml", [
        "model.qformer.dropout=0.0", "model.qformer.attention_dropout=0.0"]))
    ours.train()
    got = ours({"image": images, "text_input": T5_OUTPUTS, "prompt": T5_INSTRUCTIONS})["loss"]
    print(f"FlanT5 InstructBLIP loss: ours {float(got.detach()):.7f}, LAVIS {float(lavis['loss']):.7f}")
    assert abs(float(got.detach()) - float(lavis["loss"])) < 1e-4  # fp32 throughout: see the Vicuna test

    # few-shot mixing (off by default): LAVIS's draw fixed at 2 examples, ours likewise
    few = build_model(load_model_file(tmp_path / "conv" / "model.yaml", [
        "model.qformer.dropout=0.0", "model.qformer.attention_dropout=0.0", "model.num_few_shot_examples=3",
        "model.few_shot_prob=0.5"])).train()
    few.draw_few_shot = lambda: shots["k"]
    examples = [{"image": i, "text_input": t} for i, t in zip(shots["images"], shots["texts"])]
    got = few({"image": images, "text_input": T5_OUTPUTS, "prompt": T5_INSTRUCTIONS, "few_shot_samples": examples})
    print(f"with two few-shot examples: ours {float(got['loss'].detach()):.7f}, "
          f"LAVIS {float(lavis['few_shot_loss']):.7f}")
    assert abs(float(got["loss"].detach()) - float(lavis["few_shot_loss"])) < 1e-4
    assert abs(float(lavis["few_shot_loss"]) - float(lavis["loss"])) > 1e-2  # the examples changed the loss
    ours.eval()
    _same_texts_and_ranks(ours, lavis, images, T5_INSTRUCTIONS, T5_DECODINGS, spec, start_token_counted=False)
