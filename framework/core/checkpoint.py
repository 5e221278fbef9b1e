"""Our checkpoint format: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain data and tensors: ``model`` (trainable and non-frozen weights only; frozen
parts come from their own source when the model is built), ``optimizer``, ``scaler``, ``rng`` (every rank's
python / numpy / torch / CUDA generator states), ``iter`` (the epoch follows from it), ``best``, ``stream`` and
``stream_readers`` (shard readers' positions), ``frozen`` (the parts left out of ``model``), ``absent`` (the
parts the writing model had deleted: :class:`framework.models.interfaces.RemovesParts`), ``config`` (the
resolved config as YAML text), ``model_name`` and ``format``.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from framework.core import dist
from framework.core.errors import CheckpointError
from framework.core.logs import logger

FORMAT = "blip2-framework/1"


def make(model_name: str, weights: Dict[str, torch.Tensor], frozen: Iterable[str], **state: Any) -> Dict[str, Any]:
    """A checkpoint: the format marker, the model's registered name, its weights, the parts left out of them
    (``frozen``: they come from their own source when the model is built) and the state that goes with them
    (a run's optimizer, RNG, ``iter``...; a converted checkpoint's ``iter=0`` and source)."""
    return {"format": FORMAT, "model_name": model_name, "model": weights, "frozen": list(frozen), **state}


def optimizer_state(optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """``optimizer.state_dict()`` with each state tensor whole (gathered where FSDP shards it: every rank calls
    this), as a single process or DDP has it."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: dist.full(v) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in state["state"].items()}
    return state


def restore(ckpt: Dict[str, Any], optimizer: torch.optim.Optimizer, scaler: Any,
            readers: int) -> Tuple[int, Dict[str, Any], Dict[int, Any]]:
    """Put optimizer, scaler and this rank's RNG back where the checkpoint left them; returns the run's position:
    (iteration, best, shard readers' positions). ``readers``: this job's ranks x dataloader workers."""
    optimizer.load_state_dict(ckpt["optimizer"])
    for param, state in optimizer.state.items():  # FSDP: each rank keeps its shard of the whole saved state
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == param.shape:
                state[k] = dist.shard_like(v, param)
    scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    if len(rngs) != dist.world_size():
        logger.warning("checkpoint was written by %d processes, resuming with %d: RNG states restart",
                       len(rngs), dist.world_size())
    else:
        set_rng_state(rngs[dist.rank()])
    positions = {int(k): v for k, v in ckpt.get("stream", {}).items()}
    if positions and ckpt.get("stream_readers") != readers:
        logger.warning("the checkpoint's shard positions are of %s readers (ranks x workers), this run has %d: "
                       "the shards are read from the start; resume with the same processes and "
                       "run.num_workers to continue where the run stopped", ckpt.get("stream_readers"), readers)
        positions = {}
    return ckpt["iter"], ckpt["best"], positions


def run_weights(run_folder: Path) -> Optional[Path]:
    """The weights a finished or running run offers: ``checkpoints/best.pt``, else ``last.pt``, else None."""
    for name in ("best.pt", "last.pt"):
        if (run_folder / "checkpoints" / name).is_file():
            return run_folder / "checkpoints" / name
    return None


def frozen_prefixes(model: nn.Module) -> List[str]:
    """Top-most submodules that hold parameters, none of them trainable (their buffers are frozen too)."""
    out: List[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def trainable_keys(model: nn.Module) -> List[str]:
    """The names of the weights a checkpoint stores: trainable parameters and the buffers of non-frozen modules."""
    frozen = tuple(p + "." for p in frozen_prefixes(model))
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    return [k for k in model.state_dict() if k not in fixed and not k.startswith(frozen)]


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights a checkpoint stores (:func:`trainable_keys`), whole: a model sharded by FSDP has them gathered
    (every rank calls this), so the checkpoint is the one a single process or DDP writes."""
    state = model.state_dict()
    return {k: dist.full(state[k].detach()) for k in trainable_keys(model)}


def summarize_keys(keys: Iterable[str], n: int = 12) -> str:
    """Weight names, readable: keys that differ only in a layer index fold into ``encoder.layer.2-5.*``."""
    indices: Dict[str, set] = {}
    members: Dict[str, List[str]] = {}
    parts: List[str] = []
    for k in sorted(keys):
        m = re.match(r"^(.*?\.)(\d+)\.", k)
        if m is None:
            parts.append(k)
            continue
        indices.setdefault(m.group(1), set()).add(int(m.group(2)))
        members.setdefault(m.group(1), []).append(k)
    for prefix, idx in indices.items():
        if len(members[prefix]) == 1:  # nothing to fold
            parts.insert(0, members[prefix][0])
            continue
        lo, hi = min(idx), max(idx)
        span = f"{lo}-{hi}" if hi > lo and len(idx) == hi - lo + 1 else ",".join(map(str, sorted(idx)))
        parts.insert(0, f"{prefix}{span}.* ({len(members[prefix])} keys)")
    more = f" ... and {len(parts) - n} more" if len(parts) > n else ""
    return ", ".join(parts[:n]) + more


def check_fits(model: nn.Module, ckpt: Dict[str, Any], source: str) -> None:
    """Raise naming every mismatch between a checkpoint's weights (``ckpt["model"]``) and ``model`` (which may be
    on the meta device: names and shapes only). Parts that were frozen in the run that wrote it
    (``ckpt["frozen"]``) are not in it: they keep the weights they were built with (their own pretrained
    weights), also when they are trainable now (fine-tuning the image encoder)."""
    weights = ckpt["model"]
    own = model.state_dict()
    was_frozen = tuple(p + "." for p in ckpt.get("frozen", []))
    trainable = set(trainable_keys(model))
    expected = {k for k in trainable if not k.startswith(was_frozen)}
    if was_frozen and trainable - expected:
        logger.info("checkpoint %s: %s were frozen when it was written; they keep their own weights", source,
                    ", ".join(p.rstrip(".") for p in was_frozen))
    absent = tuple(ckpt.get("absent", []))  # the writer had deleted them: this model's own weights stay
    kept = {k for k in expected if k.startswith(absent)} if absent else set()
    if kept:
        logger.info("checkpoint %s: %s were not in the model that wrote it; they keep the weights they were built "
                    "with", source, summarize_keys(kept))
        expected -= kept
    unexpected = set(weights) - set(own)
    missing = expected - set(weights)
    shapes = [f"{k} (checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)})"
              for k in set(weights) & set(own) if weights[k].shape != own[k].shape]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} keys the model does not have: {summarize_keys(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} trainable keys the checkpoint lacks: {summarize_keys(missing)}")
    if shapes:
        more = f" ... and {len(shapes) - 12} more" if len(shapes) > 12 else ""
        problems.append(f"{len(shapes)} keys with another shape: {', '.join(sorted(shapes)[:12])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit model {type(model).__name__}:\n  "
                              + "\n  ".join(problems)
                              + "\nIs it a checkpoint of another model or config?")


def load_model_weights(model: nn.Module, ckpt: Dict[str, Any], source: str) -> None:
    """Load a checkpoint's weights into ``model`` after :func:`check_fits` (into each rank's shard when FSDP
    shards the model)."""
    check_fits(model, ckpt, source)
    own = model.state_dict()
    model.load_state_dict({k: dist.shard_like(v, own[k]) for k, v in ckpt["model"].items()}, strict=False)


def _tmp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def save_atomic(obj: Dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn ``path``. A write
    that fails (disk full, no permission) raises :class:`CheckpointError` and keeps the previous ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"cannot write checkpoint {path} ({e.strerror or e}); {kept}. Free space in "
                              f"{path.parent} or set run.output_dir to a writable folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Delete the temporary files of :func:`save_atomic` calls whose process was killed mid-write (another
    process id than this one's); the folder's run is this process's alone (the runner claims it)."""
    mine = os.getpid()
    stale = [p for p in folder.glob(".*.*.tmp") if re.fullmatch(r"\..+\.(\d+)\.tmp", p.name)
             and int(p.name.rsplit(".", 2)[1]) != mine] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary checkpoint file(s) of a killed process: %s", len(stale),
                    ", ".join(p.name for p in stale))
    return stale


def read_weights(path: str | Path, what: str) -> Dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only``: no code in
    it runs). A file that cannot be read raises :class:`CheckpointError` naming it and ``what`` it is for."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a weights file, a pickle that would run code: all unreadable
        raise CheckpointError(f"{what} {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"is the file complete (compare its size or checksum with the source)?") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a dict of weights")
    return state


def load(path: str | Path) -> Dict[str, Any]:
    ckpt = read_weights(path, "checkpoint")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (no format={FORMAT!r} marker); "
                              f"LAVIS and Hugging Face weights go through python -m framework.convert")
    return ckpt


def rng_state() -> Dict[str, Any]:
    """This process's generator states as plain Python data (it travels through all_gather_object)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
