"""LoRA on the frozen LLM (``model.llm.lora``, through peft): a zero B gives the frozen model exactly, only the
LLM's adapters train and are saved, merging changes no output, exports merge (transformers) or refuse (LAVIS),
and a wrong set-up is named before any work."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO, implementation_atol, read_log, stage2_config, write_yaml

from framework.commands.convert import main as convert_main
from framework.commands.train import main as train_main
from framework.core import checkpoint
from framework.core.errors import ConfigError
from framework.engine.experiment import load_experiment
from framework.models.build import build_model

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
BATCH = {"image": IMAGES, "prompt": ["a photo of", "a photo of"], "text_input": ["a red circle", "two blue squares"]}
LORA = {"r": 4, "alpha": 8, "dropout": 0.1}


def _model(tmp_path: Path, llm: str, lora=None, **model):
    cfg = stage2_config(tmp_path, tmp_path / "out", llm, **model)
    if lora is not None:
        cfg["model"]["llm"]["lora"] = lora
    torch.manual_seed(0)  # the frozen tiny ViT is drawn at random: the same in every model built here
    return build_model(load_experiment(str(write_yaml(tmp_path / f"{llm}_{lora is not None}.yaml", cfg))).model)


def _randomise_b(model) -> None:
    """As after training: every B non-zero (at the start B is zero)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("llm", ["opt", "flant5", "llama"])
def test_zero_b_gives_the_frozen_model_s_loss_exactly_and_only_the_llm_s_adapters_train(tmp_path: Path, llm: str):
    plain = _model(tmp_path, llm)
    adapted = _model(tmp_path, llm, LORA)
    adapted.load_state_dict(checkpoint.trainable_state_dict(plain), strict=False)  # the same Q-Former, projection
    # eval mode: in training mode LoRA's dropout draws from the generator and shifts the LLM's own dropout draws
    plain.eval(), adapted.eval()
    expected, got = plain(BATCH)["loss"], adapted(BATCH)["loss"]
    assert torch.equal(got, expected), (got.item(), expected.item())  # W x + 0: bit for bit

    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    targets = {"opt": ("q_proj", "v_proj"), "flant5": ("q", "v"), "llama": ("q_proj", "v_proj")}[llm]
    in_llm = [n for n in trainable if n.startswith("llm.")]
    assert in_llm and all(".lora_A." in n or ".lora_B." in n for n in in_llm)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in in_llm} == set(targets)
    assert not any("lora_" in n for n in trainable if not n.startswith("llm."))  # never the ViT or the Q-Former
    assert set(trainable) - set(in_llm) == {n for n, p in plain.named_parameters() if p.requires_grad}
    saved = checkpoint.trainable_state_dict(adapted)
    assert {k for k in saved if k.startswith("llm.")} == set(in_llm)  # a checkpoint holds adapters, no LLM weight


@pytest.mark.parametrize("llm", ["opt", "flant5"])
def test_a_merged_model_computes_and_generates_what_the_unmerged_one_does(tmp_path: Path, llm: str) -> None:
    model = _model(tmp_path, llm, LORA).eval()
    _randomise_b(model)
    decoding = dict(num_beams=3, max_new_tokens=6, min_new_tokens=1)
    with torch.no_grad():
        before = model(BATCH)["loss"]
        texts = model.generate(IMAGES, ["a photo of"] * 2, **decoding)
        model.llm.merge_lora()
        after = model(BATCH)["loss"]
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert type(model.llm.model).__module__.startswith("transformers.")  # a plain transformers model again
    # W x + s B (A x) against (W + s B A) x: one more rounding per adapted layer (2 LLM layers, 2 in T5's decoder)
    torch.testing.assert_close(after, before, rtol=0, atol=implementation_atol(before, 4))
    assert model.generate(IMAGES, ["a photo of"] * 2, **decoding) == texts


@pytest.mark.slow
def test_a_lora_run_saves_only_adapters_resumes_and_exports_merged_to_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    cfg = stage2_config(tmp_path, tmp_path / "out", "opt")
    cfg["model"]["llm"]["lora"] = LORA
    # the frozen ViT from a file (no checkpoint holds a frozen part): the exported model and ours then share it
    vit = {k.removeprefix("image_encoder.vit."): v for k, v in _model(tmp_path, "opt").state_dict().items()
           if k.startswith("image_encoder.vit.")}
    torch.save(vit, tmp_path / "vit.pth")
    cfg["model"]["image_encoder"]["checkpoint"] = str(tmp_path / "vit.pth")
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 16, "val": 4}
    cfg["datasets"]["shapes_caption"] = shapes
    cfg["task"] = {"name": "captioning", "num_beams": 1, "max_new_tokens": 3, "min_new_tokens": 1}
    cfg["run"].update(max_iters=4, batch_size=4, log_every=1, checkpoint_every=2, eval_splits=[])
    cfg["run"]["optimizer"]["lr"] = 5e-2  # B leaves zero within the run
    path = write_yaml(tmp_path / "c.yaml", cfg)
    assert train_main(["--cfg", str(path)]) == 0
    ckpt = checkpoint.load(tmp_path / "out" / "checkpoints" / "last.pt")
    llm_keys = [k for k in ckpt["model"] if k.startswith("llm.")]
    assert llm_keys and all("lora_" in k for k in llm_keys)
    assert any(v.abs().max() > 0 for k, v in ckpt["model"].items() if "lora_B" in k)

    # killed after 2 steps and resumed: the same 4 losses bit for bit (the adapters and their AdamW state restored)
    cfg["run"].update(output_dir=str(tmp_path / "short"), max_iters=2)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "short.yaml", cfg))]) == 0
    cfg["run"]["max_iters"] = 4
    assert train_main(["--cfg", str(write_yaml(tmp_path / "short.yaml", cfg)), "--resume", "auto"]) == 0
    resumed = [(r["iter"], r["loss"]) for r in read_log(tmp_path / "short", "train")]
    assert [i for i, _ in resumed] == [1, 2, 3, 4]
    assert resumed == [(r["iter"], r["loss"]) for r in read_log(tmp_path / "out", "train")]

    exp = ["--src", str(path), "--options", f"model.checkpoint={tmp_path / 'out' / 'checkpoints' / 'last.pt'}"]
    assert convert_main(["--from", "ours", "--to", "lavis", "--out", str(tmp_path / "lavis")] + exp) == 2
    assert not (tmp_path / "lavis").exists()  # refused before writing anything
    assert convert_main(["--from", "ours", "--to", "hf", "--out", str(tmp_path / "hf")] + exp) == 0
    ours = build_model(load_experiment(str(path), exp[3:]).model).eval()  # unmerged
    hf = Blip2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = tok(["a photo of"] * 2, return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.full((2, ours.qformer.num_query_tokens), hf.config.image_token_index), text], 1)
    with torch.no_grad():
        expected = torch.cat([ours.visual_prompt(IMAGES, ["a photo of"] * 2), ours.llm.embed(text)], 1)
        got = hf(pixel_values=IMAGES, input_ids=ids).logits
        want = ours.llm.model(inputs_embeds=expected).logits
    # the export adds transformers' "<image>" token: one more vocabulary row, compared on the rows both have
    torch.testing.assert_close(got[..., :want.shape[-1]], want, rtol=0, atol=implementation_atol(want, 8))


def test_a_wrong_lora_set_up_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"target_modules: \['qkv'\] name no linear layer of the LLM; its linear "
                                          r"layers are \[.*'q_proj'"):
        _model(tmp_path, "opt", {"target_modules": ["qkv"]})
    cfg = stage2_config(tmp_path, tmp_path / "out", "opt")
    cfg["model"]["llm"] |= {"lora": LORA, "freeze": False}
    with pytest.raises(ConfigError, match=r"lora: the LLM is trained whole \(freeze: false\)"):
        build_model(load_experiment(str(write_yaml(tmp_path / "f.yaml", cfg))).model)
    cfg["model"]["llm"] |= {"name": "hf_causal_lm", "freeze": True}
    with pytest.raises(ConfigError, match=r"the HFCausalLM adapter has no default target modules; set "
                                          r"model.llm.lora.target_modules"):
        build_model(load_experiment(str(write_yaml(tmp_path / "h.yaml", cfg))).model)
    cfg["model"]["llm"] |= {"name": "opt", "lora": {"rank": 4}}
    with pytest.raises(ConfigError, match=r"rank"):  # a typo in a key is named
        load_experiment(str(write_yaml(tmp_path / "t.yaml", cfg)))


def test_the_dry_run_counts_the_adapters_of_a_real_size_llm(capsys) -> None:
    """OPT-2.7B: 32 layers, q_proj and v_proj each 2560 -> 2560: rank 8 adds 8 x (2560 + 2560) per projection."""
    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / "stage2_opt2.7b.yaml"), "--dry-run", "--no-cost",
                       "--options", "model.llm.lora={r: 8}"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("llm "))
    total, trainable = (int(x.replace(",", "")) for x in row.split()[1:3])
    assert trainable == 32 * 2 * 8 * (2560 + 2560) and total == 2_651_596_800 + trainable


def test_a_quantised_llm_is_refused_where_bitsandbytes_cannot_run_naming_what_is_missing(tmp_path: Path,
                                                                                          capsys) -> None:
    import importlib.util

    runs_here = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    cfg = stage2_config(tmp_path, tmp_path / "out", "opt")
    cfg["model"]["llm"]["precision"] = "nf4"
    if runs_here:  # a GPU machine with bitsandbytes: the tiny LLM's linear layers are 4-bit
        from bitsandbytes.nn import Linear4bit
        model = build_model(load_experiment(str(write_yaml(tmp_path / "q.yaml", cfg))).model)
        assert any(isinstance(m, Linear4bit) for m in model.llm.model.modules())
        return
    assert train_main(["--cfg", str(write_yaml(tmp_path / "q.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "model.llm.precision: nf4 quantises the LLM through bitsandbytes, which needs a CUDA GPU" in err
    assert "use fp16 or bf16 (fp32 on a CPU)" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_the_dry_run_costs_int8_and_nf4_llms_at_their_storage_size() -> None:
    """OPT-2.7B: its linear layers (q, k, v, out, fc1, fc2 in 32 layers; the output layer shares the embeddings)
    hold 2,516,582,400 weights, 2 bytes each in fp16, 1 in int8, 0.5 + 4/64 (a scale per block of 64) in nf4."""
    from framework.engine.cost import step_cost

    cfg = str(REPO / "projects" / "blip2" / "stage2_opt2.7b.yaml")
    linear = 32 * (4 * 2560 * 2560 + 2 * 2560 * 10240)
    costs = {p: step_cost(load_experiment(cfg, [f"model.llm.precision={p}"]), batch_size=2)
             for p in ("fp16", "int8", "nf4")}
    assert costs["fp16"].weights_bytes - costs["int8"].weights_bytes == linear * (2 - 1)
    assert costs["fp16"].weights_bytes - costs["nf4"].weights_bytes == int(linear * (2 - 0.5625))
    assert costs["fp16"].peak_bytes - costs["int8"].peak_bytes == linear * (2 - 1)
    assert costs["int8"].flops == costs["fp16"].flops  # computed in fp16 all the same
