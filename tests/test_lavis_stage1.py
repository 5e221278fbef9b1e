"""Stage 1 against LAVIS itself: LAVIS's ``Blip2Qformer`` built at tiny sizes in its own venv, its real
``state_dict()`` converted with ``framework.convert --from lavis``, the same batch through both (training mode,
dropout off): ITC, ITM and ITG losses, the ITM negatives drawn from the same seed, and every gradient."""
from __future__ import annotations

from pathlib import Path

import torch
from lavis_oracle import lavis_bert, run_lavis

from framework.commands.convert import main as convert_main
from framework.engine.experiment import load_model_file
from framework.models.build import build_model

TEXTS = ["a red circle on the left", "two shapes", "a blue square in the middle", "what shape is the object",
         "a green triangle to the left of a yellow circle", "three shapes"]
SPEC = dict(seed=0, sample_seed=1, perturb=0.05, num_query_tokens=4, cross_attention_freq=2, embed_dim=16,
            max_txt_len=16, vision=dict(image_size=32, patch_size=8, width=48, depth=2, heads=4, mlp_dim=96))


def _lavis_and_ours(tmp_path: Path, **options: str):
    from plugins.models import blip2_qformer

    work = tmp_path / "lavis"
    work.mkdir()
    bert = lavis_bert(work)
    images = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lavis = run_lavis("stage1", work, {**SPEC, "images": images, "texts": TEXTS})
    torch.save({"model": lavis["state_dict"]}, tmp_path / "lavis.pth")
    v = SPEC["vision"]
    assert convert_main(["--from", "lavis", "--to", "ours", "--src", str(tmp_path / "lavis.pth"), "--out",
                         str(tmp_path / "conv"), "--options", f"model.image_encoder.heads={v['heads']}",
                         "model.qformer.num_heads=4", "model.image_encoder.precision=fp32",
                         f"model.qformer.bert={bert}"]) == 0
    sets = [f"model.max_txt_len={SPEC['max_txt_len']}", "model.qformer.dropout=0.0",
            "model.qformer.attention_dropout=0.0"] + [f"model.{k}={v}" for k, v in options.items()]
    ours = build_model(load_model_file(tmp_path / "conv" / "model.yaml", sets)).train()
    drawn, sample = [], blip2_qformer.sample_hard_negatives

    def recording(*args, **kwargs):
        out = sample(*args, **kwargs)
        drawn.extend(out.tolist())
        return out

    blip2_qformer.sample_hard_negatives = recording
    try:
        torch.manual_seed(SPEC["sample_seed"])
        losses = ours({"image": images, "text_input": TEXTS})
    finally:
        blip2_qformer.sample_hard_negatives = sample
    losses["loss"].backward()
    return lavis, ours, losses, drawn


def test_stage1_losses_negatives_and_gradients_equal_lavis(tmp_path: Path) -> None:
    from plugins.formats.lavis import lavis_to_ours

    lavis, ours, losses, drawn = _lavis_and_ours(tmp_path)
    assert torch.equal(ours.tokenize(TEXTS)[0][:, :lavis["input_ids"].shape[1]],
                       lavis["input_ids"][:, :ours.tokenize(TEXTS)[0].shape[1]])  # the same token ids
    assert drawn == lavis["negatives"]  # the same seed draws the same ITM negatives
    # fp32, 2-layer encoder + 2-layer Q-Former, losses about 1-5: both sides sum the same terms in other orders
    for ours_key, theirs in (("loss_itc", "loss_itc"), ("loss_itm", "loss_itm"), ("loss_itg", "loss_lm")):
        print(f"{ours_key}: ours {float(losses[ours_key].detach()):.7f}, LAVIS {float(lavis[theirs]):.7f}")
        assert abs(float(losses[ours_key].detach()) - float(lavis[theirs])) < 1e-5, (ours_key, lavis[theirs])
    grads, _, _ = lavis_to_ours(lavis["grads"])
    mine = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert set(grads) == set(mine)
    worst = max(float((mine[k] - g).abs().max() / g.abs().max().clamp_min(1e-30)) for k, g in grads.items())
    print(f"{len(grads)} gradients, largest difference {worst:.2e} of the tensor's largest gradient")
    for k, g in grads.items():
        # 1e-4 of the tensor's largest gradient: float32 sums over a few hundred terms per element
        torch.testing.assert_close(mine[k], g, rtol=0, atol=1e-4 * float(g.abs().max()) + 1e-12, msg=k)
