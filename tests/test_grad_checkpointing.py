"""Activation checkpointing of a trained ViT and of the Q-Former (``grad_checkpointing``): the same losses and
gradients as without it, dropout included."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from helpers import stage1_config, stage2_config, write_yaml


def _loss_and_grads(cfg: dict, tmp_path: Path, name: str) -> Dict[str, torch.Tensor]:
    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model

    torch.manual_seed(0)
    model = build_model(load_experiment(str(write_yaml(tmp_path / f"{name}.yaml", cfg))).model)
    model.train()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(6, 3, 32, 32, generator=g), "prompt": [""] * 6,
             "text_input": ["a red circle on the left", "two shapes", "a blue square", "three shapes",
                            "a green triangle in the middle", "one shape"]}
    torch.manual_seed(2)  # the dropout masks and ITM's negatives
    losses = model(batch)
    losses["loss"].backward()
    out = {k: v.detach() for k, v in losses.items()}
    return out | {f"grad:{k}": p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_checkpointing_gives_the_same_losses_and_gradients(stage: str, tmp_path: Path, monkeypatch) -> None:
    import timm.models.eva

    from framework.models import qformer

    calls = {"vit": 0, "qformer": 0}

    def counting(part: str, checkpoint):
        def wrapper(*args, **kwargs):
            calls[part] += 1
            return checkpoint(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(timm.models.eva, "checkpoint", counting("vit", timm.models.eva.checkpoint))
    monkeypatch.setattr(qformer, "checkpoint", counting("qformer", qformer.checkpoint))
    make = stage1_config if stage == "stage1" else stage2_config
    cfg = make(tmp_path, tmp_path / "out")
    model = cfg["model"]
    model["qformer"] |= {"dropout": 0.1, "attention_dropout": 0.1}  # the recomputation must redraw the same masks
    model["image_encoder"] |= {"freeze": False, "drop_path": 0.1}  # fine-tuning: the ViT trains
    plain = _loss_and_grads(cfg, tmp_path, "plain")
    assert calls == {"vit": 0, "qformer": 0}
    model["image_encoder"]["grad_checkpointing"] = True
    model["qformer"]["grad_checkpointing"] = True
    recomputed = _loss_and_grads(cfg, tmp_path, "recomputed")
    assert calls["vit"] == 2 and calls["qformer"] > 0  # every block and layer ran under checkpoint
    assert plain.keys() == recomputed.keys()
    assert any(k.startswith("grad:image_encoder.") for k in plain)  # the ViT is trained and checkpointed
    for k, v in plain.items():
        # the same operations on the same inputs; only the order in which a weight's gradient contributions
        # (one per pass through the layer) are summed may differ: a few units in the last place of the largest
        tol = 8 * torch.finfo(v.dtype).eps * float(v.abs().max())
        torch.testing.assert_close(recomputed[k], v, rtol=0, atol=tol, msg=k)
