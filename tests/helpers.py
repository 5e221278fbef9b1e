"""What the tests share, in one module: the repository's paths, small configs (the toy experiment, CPU-second
stage-1 / stage-2 experiments on shapes, the frozen-randomness probe), YAML and log helpers, a photo, and the
tolerance between two implementations of one network. Tiny models are made by ``tiny_bert`` and ``tiny_llms``."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import yaml
from PIL import Image

from tiny_bert import make_tiny_bert, vocab_size

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

SMALL_SHAPES = {"image_size": 32, "num_images": {"train": 48, "val": 16, "test": 16},
                "processors": {"train": {"image": [{"name": "random_resized_crop", "size": 32, "scale": [0.7, 1.0]},
                                                   {"name": "normalize"}]},
                               "eval": {"image": [{"name": "resize", "size": 32}, {"name": "normalize"}]}}}


def toy_config(out: Path, **run: Any) -> Dict[str, Any]:
    """A CPU-second experiment: the toy captioner on a small shapes set."""
    return {
        "plugins": ["toy_plugins"],
        "model": {"name": "toy_captioner", "image_encoder": {"name": "conv_stem", "width": 16, "depth": 2}},
        "task": {"name": "toy_task"},
        "datasets": {"shapes_caption": copy.deepcopy(SMALL_SHAPES)},
        "run": {"output_dir": str(out), "device": "cpu", "batch_size": 8, "log_every": 1, "tensorboard": False,
                "optimizer": {"lr": 1e-2, "lr_schedule": {"name": "linear_warmup_cosine", "warmup_iters": 2}},
                **run},
    }


def implementation_atol(reference: torch.Tensor, layers: int) -> float:
    """Absolute tolerance between two implementations of one floating-point network (transformers' eager
    attention against our fused one, another kernel or summation order): every layer on the path may round each
    of its sums differently. We allow 64 units in the last place of the largest reference value per layer:
    fp32, ``layers`` = 8, values up to 17 give 64 * 8 * 1.19e-7 * 17 = 1.0e-3. Bit-exactness is asserted only
    between identical computations (resume, repeat runs)."""
    eps = torch.finfo(reference.dtype).eps
    return 64 * layers * eps * reference.abs().max().item()


def write_yaml(path: Path, data: Dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_log(out: Path, event: str = "train") -> List[Dict[str, Any]]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def random_photo(path: Path, seed: int = 0) -> Path:
    """A 50x40 RGB JPEG or PNG of random pixels (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


TINY_VIT = {"name": "eva_vit_g", "image_size": 32, "patch_size": 8, "width": 48, "depth": 2, "heads": 4,
            "mlp_dim": 96, "precision": "fp32"}


def stage1_config(tmp: Path, out: Path, **run: Any) -> Dict[str, Any]:
    bert = tmp / "bert"
    if not bert.exists():
        make_tiny_bert(bert)
    return {
        "model": {"name": "blip2_qformer", "image_encoder": dict(TINY_VIT), "embed_dim": 32, "max_txt_len": 24,
                  "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                              "vocab_size": vocab_size(bert), "max_position_embeddings": 64, "num_query_tokens": 4,
                              "dropout": 0.0, "attention_dropout": 0.0, "bert": str(bert)}},
        "task": {"name": "pretrain"},
        "datasets": {"shapes_retrieval": {
            "image_size": 32, "num_images": {"train": 300, "val": 40},
            "processors": {"train": {"image": [{"name": "resize", "size": 32}, {"name": "normalize"}]},
                           "eval": {"image": [{"name": "resize", "size": 32}, {"name": "normalize"}]}}}},
        "run": {"output_dir": str(out), "device": "cpu", "batch_size": 16, "log_every": 10, "tensorboard": False,
                "optimizer": {"lr": 2e-3, "betas": [0.9, 0.98],
                              "lr_schedule": {"name": "linear_warmup_cosine", "warmup_iters": 10, "min_lr": 1e-4}},
                **run},
    }


def stage2_config(tmp: Path, out: Path, llm: str = "opt", **model: Any) -> Dict[str, Any]:
    """The stage-1 experiment above with the generative model over a tiny OPT, T5 (``flant5``) or Vicuna
    (``llama``, its tokenizer without "[PAD]", which the adapter adds) made in the test."""
    from tiny_llms import make_tiny_opt, make_tiny_t5, make_tiny_vicuna

    cfg = stage1_config(tmp, out)
    folder = tmp / llm
    if not folder.exists():
        {"opt": make_tiny_opt, "flant5": make_tiny_t5, "llama": lambda f: make_tiny_vicuna(f, pad=False)}[llm](folder)
    base = cfg["model"]
    cfg["model"] = {"name": "blip2_generative", "image_encoder": base["image_encoder"], "qformer": base["qformer"],
                    "llm": {"name": llm, "path": str(folder), "precision": "fp32"}, "prompt": "a photo of", **model}
    return cfg


def probe_config(tmp: Path, out: Path, frozen_dropout: bool, **run) -> Path:
    """A tiny stage-2 captioning run (the tiny OPT's dropout is 0.1, the frozen image encoder's drop path 0.5, the
    Q-Former's dropout 0) whose task logs whether a second pass of the model in the runner's training mode
    differs from the first (``toy_plugins``)."""
    cfg = stage1_config(tmp, out, log_every=1, **run)
    cfg["plugins"] = ["toy_plugins"]
    cfg["model"] = stage2_config(tmp, out)["model"]
    cfg["model"]["llm"]["frozen_dropout"] = frozen_dropout
    cfg["model"]["image_encoder"]["drop_path"] = 0.5  # a frozen encoder must not draw it: LAVIS keeps it in eval
    cfg["task"] = {"name": "frozen_randomness_probe", "num_beams": 1, "max_new_tokens": 3, "min_length": 1}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 16, "val": 4}
    cfg["datasets"]["shapes_caption"] = shapes
    cfg["run"]["batch_size"] = 4
    return write_yaml(tmp / f"probe_{frozen_dropout}_{len(run)}.yaml", cfg)

