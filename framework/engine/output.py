"""The output folder a run or an evaluation owns: claimed before any work, another run's files never touched
unless the user asks (``--overwrite``), and the one decision about what a ``--resume`` continues."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from framework.core import checkpoint, dist
from framework.core.config import config_changes, to_yaml
from framework.core.errors import CheckpointError, ConfigError
from framework.core.logs import logger
from framework.engine.experiment import ExperimentConfig

# What a run writes into output_dir: another run's set of these makes the folder taken (claim_output).
RUN_FILES = ("config.yaml", "log.jsonl", "train.log", "metrics.json", "checkpoints", "tensorboard", "predictions",
             "profile")


# Keys a continued run (--resume) may change: how long it runs, what and how often it evaluates and saves,
# and how it is executed; everything else would make the continued run another experiment.
RESUME_MAY_CHANGE = ("run.output_dir", "run.device", "run.max_iters", "run.max_epochs", "run.eval_every",
                     "run.eval_splits", "run.test_splits", "run.eval_batch_size", "run.log_every",
                     "run.checkpoint_every", "run.num_workers", "run.profile", "run.profile_steps",
                     "run.tensorboard", "run.dist_timeout_s", "run.compile", "run.compile_backend",
                     "run.strategy", "run.fsdp.")


def check_writable(out: Path) -> None:
    """Fail before any work when ``run.output_dir`` cannot be made or written."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run.output_dir {out}: {existing} is a file, not a folder; set run.output_dir to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.output_dir {out}: no permission to write in {existing}; set run.output_dir to a "
                          f"folder you can write")


def claim_output(out: Path, exp: ExperimentConfig, resume: Optional[str], overwrite: bool,
                 model_name: str) -> Optional[Dict[str, Any]]:
    """The one decision about a training run's ``output_dir`` and what the run continues, made before anything is
    written. A folder holding another run's files is refused unless this run continues it (``--resume``) or
    replaces it (``--overwrite`` deletes that run's files, nothing else). Returns the checkpoint the run continues
    from (``--resume auto``: the folder's ``last.pt``, if there is one yet; ``--resume PATH``: that file), read and
    checked to be of this model, or None. The config is compared once, with the checkpoint's (else the folder's
    ``config.yaml``): continuing the folder's run, only :data:`RESUME_MAY_CHANGE` keys may differ; every change is
    logged. Temporary checkpoint files of a killed process are removed."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    dist.barrier()  # every rank has looked before any rank deletes or writes: all decide alike
    if found and overwrite:
        if dist.is_main():
            for name in found:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.warning("--overwrite: deleted the previous run's %s in %s", ", ".join(found), out)
        found = []
    elif found and resume is None:
        raise ConfigError(f"run.output_dir {out} holds another run ({', '.join(found)}): continue it with "
                          f"--resume auto, replace it with --overwrite (deletes those files), or set "
                          f"run.output_dir to a new folder")
    ckpt = _resume_checkpoint(out, resume, model_name)
    before = ckpt.get("config") if ckpt is not None else None
    if before is None and found and (out / "config.yaml").is_file():  # a run killed before its first checkpoint
        before = (out / "config.yaml").read_text()
    changed = config_changes(before, to_yaml(exp)) if before is not None else {}
    blocked = {k: v for k, v in changed.items() if not k.startswith(RESUME_MAY_CHANGE)} if found else {}
    if blocked:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(blocked.items())[:8])
        raise ConfigError(f"--resume: run.output_dir {out} holds a run of another config ({shown}"
                          f"{' ...' if len(blocked) > 8 else ''}); a continued run may change only "
                          f"{', '.join(RESUME_MAY_CHANGE)}. Use another run.output_dir, or --overwrite")
    for k, (a, b) in changed.items():
        logger.info("resuming %s: %s was %r, is %r", ckpt["path"] if ckpt else out / "config.yaml", k, a, b)
    if dist.is_main():
        checkpoint.remove_stale_temporaries(out / "checkpoints")
    dist.barrier()  # rank 0 writes config.yaml only once every rank has decided
    return ckpt


def _resume_checkpoint(out: Path, resume: Optional[str], model_name: str) -> Optional[Dict[str, Any]]:
    """The checkpoint ``--resume auto|PATH`` names, read, of ``model_name``; None without ``--resume`` or before
    the folder's first checkpoint (``auto``)."""
    if resume is None:
        return None
    path = out / "checkpoints" / "last.pt" if resume == "auto" else Path(resume)
    if resume == "auto" and not path.exists():
        logger.info("--resume auto: no %s yet, starting from scratch", path)
        return None
    ckpt = checkpoint.load(path)
    if ckpt["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {ckpt['model_name']!r}, this config builds "
                              f"{model_name!r}")
    return {**ckpt, "path": str(path)}


def claim_evaluation(out: Path, model_checkpoint: Optional[str], overwrite: bool) -> Path:
    """The folder an evaluation (``framework.evaluate``) writes into: ``output_dir`` itself when it holds no
    training run, else ``output_dir/eval/<checkpoint file name>/``, so a training run's files are never touched.
    Results of an earlier evaluation there are refused unless ``overwrite`` (they are then deleted)."""
    target = out / "eval" / (Path(model_checkpoint).stem if model_checkpoint else "as_built") \
        if (out / "checkpoints").is_dir() else out
    found = [name for name in RUN_FILES if (target / name).exists()]
    dist.barrier()  # every rank has looked before any rank deletes or writes
    if found and not overwrite:
        raise ConfigError(f"{target} holds an earlier evaluation ({', '.join(found)}): pass --overwrite to replace "
                          f"it, or set run.output_dir to a new folder")
    if found and dist.is_main():
        for name in found:
            path = target / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if target != out:
        logger.info("%s holds a training run: the evaluation writes to %s and leaves the run's files as they are",
                    out, target)
    dist.barrier()
    return target
