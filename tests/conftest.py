from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # toy_plugins, importable as listed under `plugins:`
# nothing may come from a model hub: any attempt fails instead of downloading
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated data sets go to a per-session folder, never to the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["BLIP2_CACHE"] = str(path)
    return path


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
