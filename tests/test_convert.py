"""Hugging Face Blip2 and InstructBlip models converted into ours compute the same logits and generate the same
text; ours exported back load in transformers with the same logits."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import implementation_atol, stage1_config, write_yaml
from tiny_llms import make_tiny_hf_blip2, make_tiny_hf_instructblip

from framework.commands.convert import main as convert_main
from framework.engine.experiment import load_experiment, load_model_file
from framework.models.build import build_model, checkpoint_of

PROMPT = "question : what color is the circle ? answer :"


def _ours(tmp_path: Path, model_yaml: Path):
    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["_base_"] = str(model_yaml)
    cfg["model"] = {"image_encoder": {"precision": "fp32"}, "llm": {"precision": "fp32"}}
    return build_model(load_experiment(str(write_yaml(tmp_path / "ours.yaml", cfg))).model).eval()


@pytest.mark.parametrize("llm", ["opt", "opt_released", "t5"])
def test_converted_blip2_gives_the_same_logits_and_generations(tmp_path: Path, llm: str) -> None:
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    src = make_tiny_hf_blip2(tmp_path / "hf", llm)
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv")]) == 0
    ours = _ours(tmp_path, tmp_path / "conv" / "model.yaml")
    hf = Blip2ForConditionalGeneration.from_pretrained(str(src)).eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    image_token = hf.config.image_token_index
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    text = tok([PROMPT] * 2, return_tensors="pt")["input_ids"]
    hf_ids = torch.cat([torch.full((2, 4), image_token), text], 1)
    target = tok(["red", "blue"], return_tensors="pt")["input_ids"] if llm == "t5" else None
    stopped = 0
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=hf_ids, labels=target).logits
        prefix = ours.visual_prompt(images, [PROMPT] * 2)
        embeds = torch.cat([prefix, ours.llm.embed(text)], 1)
        got = ours.llm.model(inputs_embeds=embeds, labels=target).logits
    # vision 2 + Q-Former 2 + LLM 2 (OPT) or 2 + 2 (T5 encoder, decoder) layers
    torch.testing.assert_close(got, expected, rtol=0, atol=implementation_atol(expected, 8))
    for beams in (1, 5):
        decoding = dict(num_beams=beams, max_new_tokens=8, min_new_tokens=1, length_penalty=1.0,
                        repetition_penalty=1.0, do_sample=False)
        out = hf.generate(pixel_values=images, input_ids=hf_ids, **decoding)
        out = out[:, hf_ids.shape[1]:] if llm != "t5" and out.shape[1] > hf_ids.shape[1] and \
            torch.equal(out[:, :hf_ids.shape[1]], hf_ids) else out
        stopped += int((out == hf.config.text_config.eos_token_id).any(1).sum())
        # the same tokens, decoded as LAVIS decodes (transformers 4.x's default clean-up of " ?" and the like)
        theirs = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)]
        assert ours.generate(images, [PROMPT] * 2, **decoding) == theirs and any(theirs)
    if llm == "opt_released":
        assert stopped > 0  # transformers stopped at the newline somewhere, and so did we



@pytest.mark.parametrize("llm", ["vicuna", "t5"])
def test_instructblip_converts_both_ways_with_the_same_logits_and_generations(tmp_path: Path, llm: str) -> None:
    """InstructBLIP: the instruction goes through the Q-Former (its tokenizer the folder's qformer_tokenizer/) and
    the LLM; converted, ours gives transformers' logits and texts; exported back, transformers gives ours."""
    from transformers import AutoTokenizer, InstructBlipForConditionalGeneration

    src = make_tiny_hf_instructblip(tmp_path / "hf", llm)
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv")]) == 0
    ours = _ours(tmp_path, tmp_path / "conv" / "model.yaml")
    assert ours.qformer_text_input and ours.llm.tokenizer("red")["input_ids"] == \
        AutoTokenizer.from_pretrained(str(src))("red")["input_ids"]  # the folder's tokens as they are
    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["_base_"] = str(tmp_path / "conv" / "model.yaml")
    cfg["model"] = {"image_encoder": {"precision": "fp32"}, "llm": {"precision": "fp32"}}
    assert convert_main(["--from", "ours", "--to", "hf", "--src", str(write_yaml(tmp_path / "exp.yaml", cfg)),
                         "--out", str(tmp_path / "back")]) == 0
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = [PROMPT, "question : what color is the square ? answer :"]
    for folder in (src, tmp_path / "back"):
        hf = InstructBlipForConditionalGeneration.from_pretrained(str(folder)).eval()
        tok = AutoTokenizer.from_pretrained(str(folder))
        qformer = AutoTokenizer.from_pretrained(str(folder / "qformer_tokenizer"))(prompts, return_tensors="pt")
        text = tok(prompts, return_tensors="pt")["input_ids"]  # the two prompts have one length: no padding
        hf_ids = torch.cat([torch.full((2, 4), hf.config.image_token_index), text], 1)
        inputs = dict(pixel_values=images, qformer_input_ids=qformer["input_ids"],
                      qformer_attention_mask=qformer["attention_mask"], input_ids=hf_ids)
        target = tok(["red", "blue"], return_tensors="pt")["input_ids"] if llm == "t5" else None
        with torch.no_grad():
            expected = hf(**inputs, labels=target).logits
            embeds = torch.cat([ours.visual_prompt(images, prompts), ours.llm.embed(text)], 1)
            got = ours.llm.model(inputs_embeds=embeds, labels=target).logits
        # vision 2 + Q-Former 2 + LLM 2 (LLaMA) or 2 + 2 (T5 encoder, decoder) layers
        torch.testing.assert_close(got, expected, rtol=0, atol=implementation_atol(expected, 8))
    hf = InstructBlipForConditionalGeneration.from_pretrained(str(src)).eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    for beams in (1, 4):
        decoding = dict(num_beams=beams, max_new_tokens=6, min_new_tokens=1, length_penalty=1.0,
                        repetition_penalty=1.0, do_sample=False)
        with torch.no_grad():
            out = hf.generate(**inputs, **decoding)
        out = out[:, hf_ids.shape[1]:] if llm != "t5" and out.shape[1] > hf_ids.shape[1] and \
            torch.equal(out[:, :hf_ids.shape[1]], hf_ids) else out
        # decoded as the adapters decode: LLaMA's tokenizer without clean-up of spaces, T5 as LAVIS's with it
        theirs = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True,
                                                       clean_up_tokenization_spaces=llm == "t5")]
        assert ours.generate(images, prompts, **decoding) == theirs and any(theirs)


def test_a_folder_that_is_not_blip2_is_named(tmp_path: Path) -> None:
    from tiny_llms import make_tiny_opt

    from framework.core.errors import ConfigError
    from plugins.formats.hf_blip2 import HuggingFace

    with pytest.raises(ConfigError, match=r"holds a 'opt' model; --from hf reads Blip2 and InstructBlip folders"):
        HuggingFace().read(make_tiny_opt(tmp_path / "opt"), tmp_path / "out")


def test_a_lavis_stage1_checkpoint_converts_with_no_key_left_and_a_renamed_key_is_named(tmp_path: Path,
                                                                                         capsys) -> None:
    from framework.core import checkpoint
    from framework.core.errors import ConfigError
    from plugins.formats.lavis import lavis_to_ours, ours_to_lavis

    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["model"]["image_encoder"]["freeze"] = True
    spec = load_experiment(str(write_yaml(tmp_path / "s1.yaml", cfg))).model
    torch.manual_seed(3)
    source = build_model(spec)
    lavis = ours_to_lavis(source.state_dict(), None)  # as LAVIS's Blip2Qformer.state_dict() names it
    torch.save({"model": lavis}, tmp_path / "blip2_pretrained.pth")  # LAVIS nests its weights under "model"
    convert = ["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "blip2_pretrained.pth"),
               "--out", str(tmp_path / "conv")]
    # the head counts are not in the weights: LAVIS's (16 and 12) are written, and the check sees they cannot be
    assert convert_main(convert) == 2
    assert "model.qformer: hidden_size 32 is not a multiple of num_heads 12" in capsys.readouterr().err
    assert not (tmp_path / "conv").exists()  # the files it wrote before the check failed are gone
    assert convert_main(convert + ["--options", "model.qformer.num_heads=4", "model.image_encoder.heads=4",
                                   f"model.qformer.bert={tmp_path / 'bert'}", "model.image_encoder.precision=fp32"]) == 0
    printed = capsys.readouterr().out
    assert "left out, tied to the word embeddings: 1 keys" in printed
    assert "checked: " in printed and "builds and every written file fits it" in printed
    from_yaml = build_model(load_model_file(tmp_path / "conv" / "model.yaml"))  # the written section, as a user's
    for k, v in source.state_dict().items():
        assert torch.equal(from_yaml.state_dict()[k], v), k
    spec["image_encoder"]["checkpoint"] = str(tmp_path / "conv" / "vision.pt")
    spec["checkpoint"] = str(tmp_path / "conv" / "model.pt")
    torch.manual_seed(4)  # another initialisation: everything must come from the files
    converted = build_model(spec)  # strict: every trainable key present, none unknown
    for k, v in source.state_dict().items():
        assert torch.equal(converted.state_dict()[k], v), k
    assert checkpoint.load(tmp_path / "conv" / "model.pt")["model_name"] == "blip2_qformer"

    renamed = dict(lavis)
    renamed["Qformer.bert.encoder.layer.0.attention.self.querry.weight"] = renamed.pop(
        "Qformer.bert.encoder.layer.0.attention.self.query.weight")
    with pytest.raises(ConfigError, match=r"lacks Qformer.bert.encoder.layer.0.attention.self.query.weight .*; keys "
                                          r"with no place: .*Qformer.bert.encoder.layer.0.attention.self.querry.weight"):
        lavis_to_ours(renamed)


def test_a_lavis_blip2_opt_checkpoint_fits_the_generative_model(tmp_path: Path, capsys) -> None:
    from helpers import stage2_config

    from framework.core import checkpoint
    from plugins.formats.lavis import lavis_to_ours, ours_to_lavis

    stage1 = build_model(load_experiment(str(write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path)))).model)
    generative = build_model(load_experiment(str(write_yaml(tmp_path / "s2.yaml", stage2_config(tmp_path, tmp_path))))
                             .model)
    # what LAVIS's Blip2OPT deletes or never has: the text path and the stage-1 heads
    text_path = re.compile(r"Qformer\.cls\.|embeddings\.(word|position)|layer\.\d+\.(intermediate|output)\."
                           r"|^(vision_proj|text_proj|itm_head)\.|^temp$")
    lavis = {k: v for k, v in ours_to_lavis(stage1.state_dict(), None).items() if not text_path.search(k)}
    proj = generative.state_dict()["llm_proj.weight"]
    lavis |= {"opt_proj.weight": torch.randn_like(proj), "opt_proj.bias": torch.zeros(proj.shape[0]),
              "opt_model.model.decoder.embed_tokens.weight": torch.zeros(3, 3)}  # an LLM key: left out, named
    model, vision, dropped = lavis_to_ours(lavis)
    assert set(model) == set(checkpoint.trainable_state_dict(generative))  # exactly the trainable keys
    assert dropped["opt_model.model.decoder.embed_tokens.weight"].startswith("the frozen LLM")
    checkpoint.load_model_weights(generative, {"model": model, "frozen": ["image_encoder", "llm"]}, "lavis")
    assert torch.equal(generative.state_dict()["llm_proj.weight"], lavis["opt_proj.weight"])

    # through the command: the LLM is not in the file, so the output is checked once its folder is given
    torch.save({"model": lavis}, tmp_path / "blip2_opt.pth")
    convert = ["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "blip2_opt.pth")]
    sizes = ["model.qformer.num_heads=4", "model.image_encoder.heads=4", "model.image_encoder.precision=fp32"]
    assert convert_main(convert + ["--out", str(tmp_path / "a"), "--options"] + sizes) == 0
    assert "written, not yet checked" in capsys.readouterr().out
    assert "path: null" in (tmp_path / "a" / "model.yaml").read_text()
    assert convert_main(convert + ["--out", str(tmp_path / "b"), "--options", f"model.llm.path={tmp_path / 'opt'}",
                                   "model.llm.precision=fp32"] + sizes) == 0
    assert "builds and every written file fits it" in capsys.readouterr().out
    built = build_model(load_model_file(tmp_path / "b" / "model.yaml"))
    assert torch.equal(built.state_dict()["llm_proj.weight"], lavis["opt_proj.weight"])


@pytest.mark.parametrize("llm", ["opt", "t5"])
def test_exported_back_transformers_loads_it_with_the_same_logits(tmp_path: Path, llm: str) -> None:
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    src = make_tiny_hf_blip2(tmp_path / "hf", llm)
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv")]) == 0
    ours = _ours(tmp_path, tmp_path / "conv" / "model.yaml")
    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["_base_"] = str(tmp_path / "conv" / "model.yaml")
    cfg["model"] = {"image_encoder": {"precision": "fp32"}, "llm": {"precision": "fp32"}}
    assert convert_main(["--from", "ours", "--to", "hf", "--src", str(write_yaml(tmp_path / "exp.yaml", cfg)),
                         "--out", str(tmp_path / "back")]) == 0
    back = Blip2ForConditionalGeneration.from_pretrained(str(tmp_path / "back")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    text = tok([PROMPT] * 2, return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.full((2, 4), back.config.image_token_index), text], 1)
    target = tok(["red", "blue"], return_tensors="pt")["input_ids"] if llm == "t5" else None
    with torch.no_grad():
        embeds = torch.cat([ours.visual_prompt(images, [PROMPT] * 2), ours.llm.embed(text)], 1)
        expected = ours.llm.model(inputs_embeds=embeds, labels=target).logits
        got = back(pixel_values=images, input_ids=ids, labels=target).logits
    # fp32: transformers' eager attention against our fused SDPA, logits up to ~17 with these random weights
    torch.testing.assert_close(got, expected, rtol=0, atol=implementation_atol(expected, 8))


def test_converted_retrieval_model_gives_the_same_itm_and_itc_scores(tmp_path: Path) -> None:
    from tiny_bert import make_tiny_bert
    from transformers import (
        BertTokenizerFast,
        Blip2Config,
        Blip2ForImageTextRetrieval,
        Blip2QFormerConfig,
        Blip2VisionConfig,
    )

    tok = BertTokenizerFast.from_pretrained(str(make_tiny_bert(tmp_path / "bert")))
    tok.add_special_tokens({"bos_token": "[DEC]"})  # as the released BLIP-2 tokenizers carry it
    src = tmp_path / "hf_itm"
    vision = Blip2VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 encoder_hidden_size=48, vocab_size=len(tok), max_position_embeddings=64,
                                 use_qformer_text_input=True)  # as the released blip2-itm-vit-g
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), num_query_tokens=4,
                         image_text_hidden_size=16)
    torch.manual_seed(0)
    hf = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(str(src))
    tok.save_pretrained(str(src))
    assert convert_main(["--from", "hf", "--to", "ours", "--src", str(src), "--out", str(tmp_path / "conv")]) == 0
    cfg = stage1_config(tmp_path, tmp_path / "out")
    cfg["_base_"] = str(tmp_path / "conv" / "model.yaml")
    cfg["model"] = {"image_encoder": {"precision": "fp32"}}
    ours = build_model(load_experiment(str(write_yaml(tmp_path / "ours.yaml", cfg))).model).eval()
    assert ours.qformer.lm_head is None  # ITC + ITM only, as the source

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "two blue squares on the left"]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        itm = hf(pixel_values=images, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                 use_image_text_matching_head=True).logits_per_image
        itc = hf(pixel_values=images, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                 use_image_text_matching_head=False).logits_per_image
        atol = implementation_atol(itm, 4)  # vision 2 + Q-Former 2 layers
        torch.testing.assert_close(ours.match_scores(ours.image_tokens(images), texts), itm[:, 1], rtol=0, atol=atol)
        torch.testing.assert_close(ours.itm_scores(images, texts), itm.softmax(-1)[:, 1], rtol=0, atol=atol)
        sims = ours.similarity(ours.image_features(images), ours.text_features(texts))
        torch.testing.assert_close(sims, itc, rtol=0, atol=implementation_atol(itc, 4))

    # and back: transformers loads our export and scores as we do
    assert convert_main(["--from", "ours", "--to", "hf", "--src", str(tmp_path / "ours.yaml"),
                         "--out", str(tmp_path / "back")]) == 0
    back = Blip2ForImageTextRetrieval.from_pretrained(str(tmp_path / "back")).eval()
    enc = BertTokenizerFast.from_pretrained(str(tmp_path / "back"))(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        for itm_head, expected in ((True, itm), (False, itc)):
            got = back(pixel_values=images, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       use_image_text_matching_head=itm_head).logits_per_image
            torch.testing.assert_close(got, expected, rtol=0, atol=implementation_atol(expected, 4))


def test_ours_to_lavis_and_back_through_the_command(tmp_path: Path) -> None:
    """The README's ``--from ours --to lavis``: the file LAVIS's load_checkpoint reads converts back to our model."""
    from framework.core import checkpoint

    cfg = stage1_config(tmp_path, tmp_path / "out")
    torch.manual_seed(5)
    source = build_model(load_experiment(str(write_yaml(tmp_path / "s1.yaml", cfg))).model)
    checkpoint.save_atomic(checkpoint_of(source, "blip2_qformer", iter=0), tmp_path / "trained.pt")
    torch.save({k.removeprefix("image_encoder.vit."): v for k, v in source.state_dict().items()
                if k.startswith("image_encoder.")}, tmp_path / "eva.pth")  # the frozen encoder's own file
    cfg["model"]["checkpoint"] = str(tmp_path / "trained.pt")
    cfg["model"]["image_encoder"]["checkpoint"] = str(tmp_path / "eva.pth")
    assert convert_main(["--from", "ours", "--to", "lavis", "--src", str(write_yaml(tmp_path / "exp.yaml", cfg)),
                         "--out", str(tmp_path / "lavis")]) == 0
    saved = torch.load(tmp_path / "lavis" / "model.pth", weights_only=True)["model"]
    assert "Qformer.bert.encoder.layer.1.output_query.dense.weight" in saved and "visual_encoder.pos_embed" in saved
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis" / "model.pth"),
                         "--out", str(tmp_path / "back"), "--options", "model.qformer.num_heads=4",
                         "model.image_encoder.heads=4", "model.image_encoder.precision=fp32",
                         f"model.qformer.bert={tmp_path / 'bert'}", "model.max_txt_len=24"]) == 0
    back = build_model(load_model_file(tmp_path / "back" / "model.yaml"))
    for k, v in source.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("width, encoder, file", [(1408, "eva_vit_g", "eva_vit_g.pth"),
                                                  (1024, "clip_vit_l", "clip_vit_L.pth"), (48, "eva_vit_g", None)])
def test_a_lavis_checkpoint_without_its_frozen_vit_names_the_encoder_its_q_former_reads(
        tmp_path: Path, width: int, encoder: str, file) -> None:
    """LAVIS saves no frozen weights: a stage-1 file of the ViT-L model (blip2_pretrained_vitL.pth) is told from a
    ViT-g one by the width of the tokens ln_vision normalises."""
    from plugins.formats.lavis import Lavis, ours_to_lavis

    spec = load_experiment(str(write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "out")))).model
    state = {k: v for k, v in ours_to_lavis(build_model(spec).state_dict(), None).items()
             if not k.startswith("visual_encoder.")}
    state["ln_vision.weight"], state["ln_vision.bias"] = torch.ones(width), torch.zeros(width)
    torch.save({"model": state}, tmp_path / "blip2_pretrained.pth")
    converted = Lavis().read(tmp_path / "blip2_pretrained.pth", tmp_path / "conv")
    assert converted.model["image_encoder"]["name"] == encoder
    need = next(n for n in converted.needs if n.startswith("model.image_encoder"))
    assert (file in need) if file else "48-wide tokens, neither LAVIS's EVA ViT-g nor its CLIP ViT-L" in need
