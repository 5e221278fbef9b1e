"""InstructBLIP against LAVIS itself: LAVIS's ``Blip2VicunaInstruct`` (its repository's code, tests/lavis/instruct/)
at tiny sizes over a Vicuna as the released ones are (LLaMA architecture, a SentencePiece tokenizer, "[PAD]" and
"</s>" as LAVIS sets them), its state_dict converted with ``framework.convert --from lavis``: the LM loss of
instructions and outputs (both cut: the instruction from its start, the output from its end), and the texts
generated with beam search and with nucleus sampling, as strings."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from lavis_oracle import lavis_bert, run_lavis
from tiny_llms import make_tiny_vicuna

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
    """LAVIS's generate arguments in our names: given embeddings alone, transformers 4.33 starts the sequence with
    the start token, which its max_length counts (min_length too, which the adapter knows)."""
    out = dict(num_beams=lavis["num_beams"], max_new_tokens=lavis["max_length"] - 1, min_length=lavis["min_length"],
               repetition_penalty=lavis["repetition_penalty"])
    if lavis.get("use_nucleus_sampling"):
        out |= dict(do_sample=True, top_p=lavis["top_p"])
    else:
        out |= dict(length_penalty=float(lavis["length_penalty"]))
    return out


def test_vicuna_instruct_converts_and_equals_lavis(tmp_path: Path) -> None:
    work = tmp_path / "lavis"
    work.mkdir()
    bert = lavis_bert(work)  # LAVIS's Q-Former tokenizer and ours: InstructBLIP's Q-Former reads the instruction
    vicuna = make_tiny_vicuna(tmp_path / "vicuna")
    shutil.copytree(vicuna, work / "vicuna")
    images = torch.randn(len(INSTRUCTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lavis = run_lavis("vicuna", work, {**SPEC, "images": images, "instructions": INSTRUCTIONS, "outputs": OUTPUTS})
    torch.save({"model": lavis["state_dict"]}, tmp_path / "lavis.pth")
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", "model.image_encoder.heads=4", "model.qformer.num_heads=4",
                         "model.image_encoder.precision=fp32", f"model.qformer.bert={bert}", f"model.llm.path={vicuna}",
                         "model.llm.precision=fp32", "model.max_txt_len=12", "model.llm.max_txt_len=12",
                         "model.llm.max_output_txt_len=6"]) == 0
    section = yaml.safe_load((tmp_path / "conv" / "model.yaml").read_text())["model"]
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
    for name, decoding in DECODINGS.items():
        torch.manual_seed(SPEC["sample_seed"])
        texts = ours.generate(images, INSTRUCTIONS, **_ours_decoding(decoding))
        print(f"{name}: LAVIS {lavis['generated'][name]}, ours {texts}")
        assert texts == lavis["generated"][name] and any(texts)
