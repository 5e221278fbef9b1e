"""The machine a run uses: its device, deterministic kernels (MKL's reproducible mode checked), seeds."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.engine.experiment import RunConfig


def run_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_determinism(cfg: RunConfig, device: torch.device) -> bool:
    """Deterministic kernels per ``run.deterministic``; True when on. On CPU also checks that MKL runs in its
    strict reproducible mode (``MKL_CBWR``, set when ``framework`` is imported) and warns with the fix if not."""
    on = cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at its first call
    torch.use_deterministic_algorithms(on)
    if on and device.type == "cpu" and not mkl_reproducible():
        logger.warning("MKL is not in its reproducible mode (MKL_CBWR=%s): losses may differ in the last bits from "
                       "run to run. Set MKL_CBWR=AUTO,STRICT in the environment, or import framework before the "
                       "first matrix product", os.environ.get("MKL_CBWR"))
    return on


def mkl_reproducible() -> bool:
    """Whether torch's MKL runs with strict conditional numerical reproducibility (True without MKL)."""
    import ctypes

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(lib)).mkl_serv_cbwr_get
    except (OSError, AttributeError):  # not Linux x86, or a torch built without MKL
        return True
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return bool(get(-1) & 0x10000)  # MKL_CBWR_STRICT


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
