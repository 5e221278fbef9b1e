"""The real-size configs build on the meta device in seconds, with the paper's parameter counts."""
from __future__ import annotations

import re

import pytest
import torch
from helpers import REPO

from framework.commands.train import main as train_main


def _table(out: str) -> dict:
    return {m.group(1): (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
            for m in re.finditer(r"^(\S+)\s+([\d,]+)\s+([\d,]+)$", out, re.M)}


@pytest.mark.parametrize("cfg, vit, qformer", [
    # EVA ViT-g/14: 1.01B with 40 blocks, 985.9M with the 39 BLIP-2 uses; paper: "about 1B"
    ("stage1_vitg.yaml", 985_894_528, 186_307_387),
    # CLIP ViT-L/14: 303M with 24 blocks, 290.6M with 23; the Q-Former cross-attends 1024-wide tokens
    ("stage1_vitl.yaml", 290_581_504, 182_768_443),
])
def test_real_size_dry_run(cfg: str, vit: int, qformer: int, capsys) -> None:
    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / cfg), "--dry-run", "--no-cost"]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert "[MISSING] image encoder weights" in out  # the real weights are listed, not needed for a dry run
    assert table["image_encoder"] == (vit, 0)  # frozen
    assert table["qformer"] == (qformer, qformer)
    trainable = table["total"][1]
    # the paper: "the Q-Former ... contains 188M parameters" (with its projections and ITM head)
    assert abs(trainable - 188e6) / 188e6 < 0.03


# the paper's Table 2: (trainable, total) parameters of each stage-2 model
TABLE2 = [
    ("stage2_vitl_opt2.7b.yaml", 104e6, 3.1e9),
    ("stage2_opt2.7b.yaml", 107e6, 3.8e9),
    ("stage2_opt6.7b.yaml", 108e6, 7.8e9),
    ("stage2_vitl_flant5xl.yaml", 103e6, 3.4e9),
    ("stage2_flant5xl.yaml", 107e6, 4.1e9),
    ("stage2_flant5xxl.yaml", 108e6, 12.1e9),
]


@pytest.mark.parametrize("cfg, trainable, total", TABLE2)
def test_stage2_dry_run_matches_table2(cfg: str, trainable: float, total: float, capsys) -> None:
    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / cfg), "--dry-run", "--no-cost"]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert table["llm"][1] == 0 and table["image_encoder"][1] == 0  # both frozen
    assert "[MISSING] LLM folder (config, tokenizer, weights)" in out
    assert "[MISSING] stage-1 checkpoint" in out
    # trainable: the Q-Former without its text path, ln_vision and the projection; the paper rounds to 1M
    assert round(table["total"][1] / 1e6) == round(trainable / 1e6)
    # total: within 5% (we count the 39/23 ViT blocks BLIP-2 uses; FlanT5-XL has 2.85B, the paper says "3B")
    assert abs(table["total"][0] - total) / total < 0.05


@pytest.mark.parametrize("cfg", sorted(str(p.relative_to(REPO / "projects" / "blip2"))
                                       for p in (REPO / "projects" / "blip2").glob("[fe]*/*.yaml")))
def test_finetune_and_eval_configs_validate_and_build(cfg: str, capsys) -> None:
    from framework.commands.evaluate import main as evaluate_main

    assert evaluate_main(["--cfg", str(REPO / "projects" / "blip2" / cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # each starts from the run before it (output/), or from a released model prepared by the zoo (models/:
    # InstructBLIP, whose instruction tuning has no config here)
    assert "[MISSING] model.checkpoint: output/" in out or "[MISSING] model.checkpoint: models/" in out


PAPER_DATA = ["coco_caption_shards", "vg_caption_shards", "cc3m", "cc12m", "sbu", "laion"]


@pytest.mark.parametrize("cfg", ["stage1_vitg.yaml", "stage1_vitl.yaml"] + [c for c, _, _ in TABLE2])
def test_pretraining_configs_train_on_the_papers_data_in_proportion_to_size(cfg: str) -> None:
    from framework.engine.experiment import load_experiment

    exp = load_experiment(str(REPO / "projects" / "blip2" / cfg))
    assert list(exp.datasets) == PAPER_DATA  # COCO, VG, CC3M, CC12M, SBU, LAION-115M; never the shapes
    ratios = {e: spec["sample_ratio"] for e, spec in exp.datasets.items()}
    assert ratios["laion"] == 115e6 and abs(sum(ratios.values()) - 129e6) / 129e6 < 0.03  # "129M images"


def test_dry_run_names_generated_data_under_a_real_size_model(tmp_path, capsys) -> None:
    from helpers import write_yaml

    cfg = write_yaml(tmp_path / "shapes_vitg.yaml", {"_base_": str(REPO / "projects" / "blip2" / "stage1_vitg.yaml"),
                                                     "datasets": {"_delete_": True,
                                                                  "shapes_retrieval": {"image_size": 224}}})
    assert train_main(["--cfg", str(cfg), "--dry-run", "--no-cost"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: a real-size model (1,173M parameters) with generated data: datasets.shapes_retrieval" in out
    assert train_main(["--cfg", str(REPO / "projects" / "blip2" / "stage1_vitg.yaml"), "--dry-run", "--no-cost"]) == 0
    assert "WARNING" not in capsys.readouterr().out


@pytest.mark.parametrize("lora", [False, True])
def test_a_real_size_stage2_checkpoint_holds_no_llm_weight(lora: bool) -> None:
    """OPT-6.7B stage 2, built on the meta device: a checkpoint holds the trained parts only, no frozen LLM (or ViT)
    weight; with LoRA, of the LLM only its adapters."""
    from framework.core.checkpoint import frozen_prefixes, trainable_state_dict
    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model

    options = ["model.llm.lora={r: 8}"] if lora else []
    exp = load_experiment(str(REPO / "projects" / "blip2" / "stage2_opt6.7b.yaml"), options)
    with torch.device("meta"):
        model = build_model(exp.model)
    saved = trainable_state_dict(model)
    llm = [k for k in saved if k.startswith("llm.")]
    assert not any(k.startswith("image_encoder.") for k in saved) and "image_encoder" in frozen_prefixes(model)
    if lora:  # 32 layers x (q_proj, v_proj) x (A, B)
        assert len(llm) == 32 * 2 * 2 and all(".lora_A." in k or ".lora_B." in k for k in llm)
    else:
        assert not llm and "llm" in frozen_prefixes(model)
    assert sum(v.numel() for k, v in saved.items() if not k.startswith("llm.")) < 2e8  # the Q-Former, ln, projection
