"""``python -m framework.zoo``: the released models by LAVIS's and transformers' names, and prepared folders that
``load``, ``predict`` and ``evaluate`` take and that caption exactly as the source model does."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import REPO, random_photo, stage2_config, write_yaml
from tiny_llms import make_tiny_hf_blip2, make_tiny_hf_instructblip

from framework.commands.convert import main as convert_main
from framework.commands.evaluate import main as evaluate_main
from framework.commands.predict import main as predict_main
from framework.commands.zoo import main as zoo_main
from framework.core.registry import ZOO
from framework.engine.experiment import load_experiment
from framework.models.build import build_model, checkpoint_of

# the names LAVIS's load_model_and_preprocess and transformers' from_pretrained take
LAVIS_NAMES = ["pretrain", "pretrain_vitL", "coco", "pretrain_opt2.7b", "pretrain_opt6.7b", "caption_coco_opt2.7b",
               "caption_coco_opt6.7b", "pretrain_flant5xl", "pretrain_flant5xl_vitL", "pretrain_flant5xxl",
               "caption_coco_flant5xl", "vicuna7b", "vicuna13b", "flant5xl", "flant5xxl"]
HF_NAMES = ["Salesforce/blip2-opt-2.7b", "Salesforce/blip2-opt-6.7b", "Salesforce/blip2-opt-2.7b-coco",
            "Salesforce/blip2-flan-t5-xl", "Salesforce/blip2-flan-t5-xxl", "Salesforce/blip2-itm-vit-g",
            "Salesforce/instructblip-vicuna-7b", "Salesforce/instructblip-vicuna-13b",
            "Salesforce/instructblip-flan-t5-xl", "Salesforce/instructblip-flan-t5-xxl"]
DECODING = dict(num_beams=5, max_new_tokens=8, min_new_tokens=3, length_penalty=1.0, repetition_penalty=1.0,
                do_sample=False)


def test_list_and_show_give_every_file_with_its_address_and_the_paper_figure(capsys) -> None:
    assert zoo_main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in LAVIS_NAMES + HF_NAMES:
        assert re.search(rf"^{re.escape(name)}\s", listed, re.M), name
        assert zoo_main(["show", name]) == 0
        shown = capsys.readouterr().out
        assert "reproduces:" in shown and f"framework.zoo prepare {name}" in shown
        entry = ZOO.get(name)
        for source in entry.sources:
            assert f"from {source.address}" in shown and source.address.startswith("https://")
        if entry.evaluation:  # eval.yaml's base ships with the repository
            assert (REPO / entry.evaluation).is_file(), entry.evaluation
    assert "Table 3, COCO Karpathy test: BLEU-4 43.7, CIDEr 145.8" in listed  # caption_coco_opt2.7b
    assert zoo_main(["show", "pretrain_opt27b"]) == 2
    assert "did you mean 'pretrain_opt2.7b'" in capsys.readouterr().err


def _caption_eval_config(tmp_path: Path) -> Path:
    """A tiny stand-in for the paper's evaluation config: shapes captions at the tiny models' 32 px."""
    cfg = stage2_config(tmp_path, tmp_path / "unused")
    cfg["task"] = {"name": "captioning", "num_beams": 2, "max_new_tokens": 5}
    cfg["datasets"] = {"shapes_caption": {**cfg["datasets"]["shapes_retrieval"],
                                          "num_images": {"train": 8, "val": 6, "test": 6}}}
    cfg["run"] |= {"train_splits": [], "eval_splits": ["val"], "eval_batch_size": 6}
    return write_yaml(tmp_path / "eval_caption.yaml", cfg)


def test_prepared_from_a_transformers_folder_captions_as_transformers_and_runs_everywhere(tmp_path: Path,
                                                                                         capsys) -> None:
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    src = make_tiny_hf_blip2(tmp_path / "blip2-opt-2.7b", "opt_released")
    prepared = tmp_path / "models" / "blip2-opt-2.7b"
    assert zoo_main(["prepare", "Salesforce/blip2-opt-2.7b", "--src", f"model={src}", "--out", str(prepared),
                     "--evaluation", str(_caption_eval_config(tmp_path)),
                     "--options", "model.image_encoder.precision=fp32", "model.llm.precision=fp32"]) == 0
    assert "builds and every written file fits it" in capsys.readouterr().out
    photo = random_photo(tmp_path / "cat.jpg")

    from framework import load
    model, preprocess = load(prepared)
    captions = model.caption([photo], **DECODING)

    hf = Blip2ForConditionalGeneration.from_pretrained(str(src)).eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    pixels = preprocess(photo)[None]  # the encoder's own processing: 32 px, CLIP's mean and std
    ids = torch.cat([torch.full((1, 4), hf.config.image_token_index), tok([""], return_tensors="pt")["input_ids"]], 1)
    with torch.no_grad():
        out = hf.generate(pixel_values=pixels, input_ids=ids, **DECODING)
    out = out[:, ids.shape[1]:] if torch.equal(out[:, :ids.shape[1]], ids) else out
    assert captions == [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)] and captions[0]

    with pytest.raises(Exception, match=r"model reads \(3, 32, 32\)"):  # a size mismatch is named, not a traceback
        model.caption(torch.zeros(1, 3, 64, 64))
    assert predict_main(["--cfg", str(prepared), "--json", "caption", str(photo)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["caption"] == model.caption([photo])[0]
    assert evaluate_main(["--cfg", str(prepared)]) == 0
    metrics = json.loads((prepared / "eval" / "metrics.json").read_text())
    assert "shapes_caption/val/cider" in json.dumps(metrics)  # the results in the prepared folder's eval/



def test_prepared_instructblip_answers_as_transformers(tmp_path: Path) -> None:
    """An InstructBLIP folder (Vicuna) prepared under its transformers name answers as transformers does: the
    question through the Q-Former (the folder's qformer_tokenizer) and after the queries into the LLM."""
    from transformers import AutoTokenizer, InstructBlipForConditionalGeneration

    src = make_tiny_hf_instructblip(tmp_path / "instructblip-vicuna-7b", "vicuna")
    prepared = tmp_path / "models" / "instructblip-vicuna-7b"
    assert zoo_main(["prepare", "Salesforce/instructblip-vicuna-7b", "--src", f"model={src}", "--out", str(prepared),
                     "--options", "model.image_encoder.precision=fp32", "model.llm.precision=fp32"]) == 0
    photo = random_photo(tmp_path / "cat.jpg")

    from framework import load
    model, preprocess = load(prepared)
    question = "what color is the circle ?"
    answers = model.ask([photo], [question], **DECODING)

    hf = InstructBlipForConditionalGeneration.from_pretrained(str(src)).eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    prompt = f"Question: {question} Answer:"  # ask's template
    qformer = AutoTokenizer.from_pretrained(str(src / "qformer_tokenizer"))([prompt], return_tensors="pt")
    ids = torch.cat([torch.full((1, 4), hf.config.image_token_index), tok([prompt], return_tensors="pt")["input_ids"]],
                    1)
    with torch.no_grad():
        out = hf.generate(pixel_values=preprocess(photo)[None], qformer_input_ids=qformer["input_ids"],
                          qformer_attention_mask=qformer["attention_mask"], input_ids=ids, **DECODING)
    out = out[:, ids.shape[1]:] if torch.equal(out[:, :ids.shape[1]], ids) else out
    # LLaMA's tokenizer decodes without clean-up of spaces (its tokenizer_config says so)
    theirs = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)]
    assert answers == theirs and answers[0]


def test_prepared_from_a_lavis_checkpoint_captions_as_the_model_it_came_from(tmp_path: Path) -> None:
    """A LAVIS caption checkpoint (the ViT trained, so in the file; the LLM not) made from a model of ours."""
    cfg = stage2_config(tmp_path, tmp_path / "out")
    torch.manual_seed(3)
    source = build_model(load_experiment(str(write_yaml(tmp_path / "s2.yaml", cfg))).model).eval()
    from framework.core import checkpoint

    checkpoint.save_atomic(checkpoint_of(source, "blip2_generative", iter=0), tmp_path / "trained.pt")
    cfg["model"]["checkpoint"] = str(tmp_path / "trained.pt")
    assert convert_main(["--from", "ours", "--to", "lavis", "--src", str(write_yaml(tmp_path / "exp.yaml", cfg)),
                         "--out", str(tmp_path / "lavis")]) == 0
    prepared = tmp_path / "caption_coco_opt2.7b"
    sizes = ["model.qformer.num_heads=4", "model.image_encoder.heads=4", "model.llm.precision=fp32"]
    assert zoo_main(["prepare", "caption_coco_opt2.7b", "--out", str(prepared), "--options", *sizes, "--src",
                     f"checkpoint={tmp_path / 'lavis' / 'model.pth'}", f"llm={tmp_path / 'opt'}"]) == 0
    assert "_delete_: true" in (prepared / "eval.yaml").read_text()  # the paper's evaluation, this model in it

    from framework import load
    model, preprocess = load(prepared)
    photo = preprocess(random_photo(tmp_path / "dog.png", 1))
    with torch.no_grad():
        expected = source.generate(photo[None], ["a photo of"], **DECODING)  # LAVIS's caption prompt
    assert model.caption([photo], **DECODING) == expected and expected[0]


def test_prepare_names_what_is_missing_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert zoo_main(["prepare", "pretrain_opt2.7b", "--out", str(out), "--src", f"checkpoint={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "needs --src vision=PATH" in err and "eva_vit_g.pth" in err and "llm=PATH" in err
    assert "https://huggingface.co/facebook/opt-2.7b" in err and not out.exists()
    assert zoo_main(["prepare", "pretrain_opt2.7b", "--out", str(out), "--src", "ckpt=x.pth"]) == 2
    assert "ROLE one of checkpoint, vision, llm" in capsys.readouterr().err
    assert zoo_main(["prepare", "Salesforce/blip2-opt-2.7b", "--out", str(out), "--src",
                     f"model={tmp_path / 'nothing'}"]) == 2
    assert "no such file or folder" in capsys.readouterr().err and not out.exists()
    assert zoo_main(["prepare", "Salesforce/blip2-opt-2.7b", "--out", str(out), "--src", f"model={tmp_path}",
                     "--evaluation", str(tmp_path / "no_such.yaml")]) == 2
    assert "the evaluation config" in capsys.readouterr().err and not out.exists()  # refused before converting
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert zoo_main(["prepare", "Salesforce/blip2-opt-2.7b", "--out", str(out), "--src", f"model={tmp_path}"]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
