"""The training / evaluation loop, and the schema of the ``run:`` section that drives it.

An *iteration* is one optimizer step: ``accum_steps`` micro-batches of ``batch_size`` samples on each of
the ``world_size`` processes. Learning rate, logging, evaluation and checkpoints all count iterations.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from framework import checkpoint, dist
from framework.config import DatasetsOf, to_yaml
from framework.data.builder import DatasetBuilder
from framework.data.feature_cache import cache_folder, open_cache, random_processors
from framework.data.loader import (IterableMixture, Mixture, eval_loader, is_stream, set_position, set_stream_position,
                                   stream_loader, train_loader)
from framework.errors import CheckpointError, ConfigError, NonFiniteLossError
from framework.logs import RunLog, logger, truncate_after
from framework.models.build import build_model, parameter_table
from framework.optim import OptimConfig, build_optimizer, build_schedule, set_lr
from framework.registry import DATASETS, Length, Part, Range, build
from framework.task import Task


@dataclass
class RunConfig:
    """``run:``. Keys:

    output_dir: where config.yaml, log.jsonl, train.log, metrics.json, checkpoints/ and tensorboard/ go.
    seed: seeds model init, data order and per-sample augmentation.
    device: auto (CUDA when available), cpu or cuda.
    max_epochs: length of an epoch-based run. max_iters: if set, an iteration-based run of that many
    optimizer steps (epochs then only reshuffle the data), for web-scale data.
    batch_size: samples per process per micro-batch; eval_batch_size: per process at evaluation (default:
    batch_size). accum_steps: micro-batches per optimizer step. grad_clip: max global grad norm (null: off).
    amp: off, bf16 (autocast on CPU and CUDA) or fp16 (CUDA only, with a GradScaler).
    train_splits / eval_splits / test_splits: split names of every dataset entry (train_splits: [] only for
    framework.evaluate, which trains nothing). eval splits are evaluated
    every ``eval_every`` iterations (null: at the end of each epoch, or at the end of an iteration-based run);
    the first eval split picks best.pt by the task's metric; test splits are evaluated once, at the end,
    with the best weights. log_every: iterations between log.jsonl records. checkpoint_every: iterations
    between checkpoints (null: with each evaluation and at the end of each epoch).
    shuffle: shuffle the training data (map-style: a permutation per epoch; shards: shard order per pass and
    the entry's shuffle buffer); false: the stored order, e.g. to compare two loaders sample for sample.
    num_workers: dataloader worker processes (for shards: each rank's workers split its shards).
    profile: write a torch profiler trace of ``profile_steps`` iterations to output_dir/profile (open with
    TensorBoard's profiler plugin).
    find_unused_parameters: DDP's flag, for models whose loss skips some trainable parameters.
    tensorboard: write TensorBoard scalars.
    dist_timeout_s: under torchrun, how long a rank waits for the others in a collective (a stopped or hung
    rank) before the job fails; torch's default is 30 minutes.
    deterministic: deterministic kernels (``torch.use_deterministic_algorithms``), so the same config and seed
    give the same losses bit for bit, run after run and across a kill and resume. null: on for CPU, off for
    CUDA (where some kernels, e.g. scatter-adds in attention backward, have no deterministic version or run
    slower; with it on there, CUBLAS_WORKSPACE_CONFIG is set and ops without a deterministic kernel raise).
    """
    output_dir: Annotated[str, Length(1)] = "output/run"
    seed: Annotated[int, Range(0)] = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_epochs: Annotated[int, Range(1)] = 1
    max_iters: Optional[Annotated[int, Range(1)]] = None
    batch_size: Annotated[int, Range(1)] = 8
    eval_batch_size: Optional[Annotated[int, Range(1)]] = None
    accum_steps: Annotated[int, Range(1)] = 1
    grad_clip: Optional[Annotated[float, Range(0, lo_open=True)]] = None
    amp: Literal["off", "bf16", "fp16"] = "off"
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    train_splits: List[str] = field(default_factory=lambda: ["train"])
    eval_splits: List[str] = field(default_factory=lambda: ["val"])
    test_splits: List[str] = field(default_factory=list)
    eval_every: Optional[Annotated[int, Range(1)]] = None
    log_every: Annotated[int, Range(1)] = 10
    checkpoint_every: Optional[Annotated[int, Range(1)]] = None
    num_workers: Annotated[int, Range(0)] = 0
    shuffle: bool = True
    profile: bool = False
    profile_steps: Annotated[int, Range(1)] = 5
    find_unused_parameters: bool = False
    tensorboard: bool = True
    deterministic: Optional[bool] = None
    dist_timeout_s: Annotated[float, Range(0, lo_open=True)] = 600.0


@dataclass
class ExperimentConfig:
    """The whole config. ``model`` / ``task``: a registered part and its arguments; ``datasets``: entries of
    ``datasets_cfg/`` with overrides; ``run``: :class:`RunConfig`; ``plugins``: extra modules to import."""
    model: Part("model")
    task: Part("task")
    datasets: Annotated[Dict[str, Any], DatasetsOf()]
    run: RunConfig = field(default_factory=RunConfig)
    plugins: List[str] = field(default_factory=list)


# What a run writes into output_dir: another run's set of these makes the folder taken (Runner.claim_output).
RUN_FILES = ("config.yaml", "log.jsonl", "train.log", "metrics.json", "checkpoints", "tensorboard", "predictions",
             "profile")
# Keys a continued run (--resume) may change: how long it runs, what and how often it evaluates and saves,
# and how it is executed; everything else would make the continued run another experiment.
RESUME_MAY_CHANGE = ("run.output_dir", "run.device", "run.max_iters", "run.max_epochs", "run.eval_every",
                     "run.eval_splits", "run.test_splits", "run.eval_batch_size", "run.log_every",
                     "run.checkpoint_every", "run.num_workers", "run.profile", "run.profile_steps",
                     "run.tensorboard", "run.dist_timeout_s")


def config_changes(before: str, after: str) -> Dict[str, tuple]:
    """Dotted key -> (value before, value after) for every leaf that differs between two configs' YAML."""
    import yaml

    def flat(node: Any, prefix: str = "") -> Dict[str, Any]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    a, b = flat(yaml.safe_load(before) or {}), flat(yaml.safe_load(after) or {})
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def builders(exp: ExperimentConfig) -> Dict[str, DatasetBuilder]:
    out = {}
    for entry, spec in exp.datasets.items():
        args = {k: v for k, v in spec.items() if k not in ("builder", *DATASETS.reserved)}
        out[entry] = build("dataset", {"name": spec["builder"], **args}, entry=entry)
    return out


class Runner:
    """Builds everything from a validated :class:`ExperimentConfig`, then trains and evaluates.

    Construction checks data files and builds the model before anything is written to ``output_dir``, so a
    bad config or missing data leaves no half-written run behind.
    """

    def __init__(self, exp: ExperimentConfig) -> None:
        self.exp, self.cfg = exp, exp.run
        self.device = run_device(self.cfg)
        self.pin = self.device.type == "cuda"  # pinned batches: the copy to the GPU overlaps the step
        set_determinism(self.cfg, self.device)
        dist.init(self.device, self.cfg.dist_timeout_s)
        if self.cfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("run.amp=fp16 needs CUDA (it uses a GradScaler); on CPU use run.amp=bf16 or off")
        self.out = Path(self.cfg.output_dir)
        check_writable(self.out)
        if not exp.datasets:
            raise ConfigError("datasets: no data set is named; add an entry of datasets_cfg/ (e.g. datasets: "
                              "{shapes_caption: {}}) or your own (builder: records)")
        self.builders = builders(exp)
        splits = self.cfg.train_splits + self.cfg.eval_splits + self.cfg.test_splits
        for b in self.builders.values():
            b.prepare(splits)
        seed_everything(self.cfg.seed)  # same init on every rank
        self.task: Task = build("task", exp.task)
        self.model: nn.Module = build_model(exp.model).to(self.device)
        self.caches = self._feature_caches(splits)
        seed_everything(self.cfg.seed + dist.rank())
        self.ddp_model = self._wrap(self.model)
        self.it = 0
        self.best: Dict[str, Any] = {}
        self.stream_positions: Dict[int, Any] = {}  # reader slot -> position, for training on shards

    def _feature_caches(self, splits: List[str]) -> Dict[tuple, Any]:
        """(entry, split) -> the frozen-feature cache each data set reads, when a part of the model reads cached
        features (``cached: true``); refused, with the reason, where a cache cannot stand in for the images."""
        readers = [m for m in self.model.modules() if getattr(m, "cached", False) and hasattr(m, "fingerprint")]
        if not readers:
            return {}
        enc = readers[0]
        make = "python -m framework.cache_features --cfg <this experiment's config>"
        out = {}
        for entry, b in self.builders.items():
            for split in dict.fromkeys(splits):
                if not b.has_split(split):
                    continue
                where = f"datasets.{entry} ({split})"
                rand = random_processors(b.processors(split)["image"])
                if rand:
                    raise ConfigError(f"{where}: the image encoder reads cached features but the split's image "
                                      f"processors augment randomly ({', '.join(rand)}): a cache holds one view per "
                                      f"image. Give it fixed processing (datasets.{entry}.processors.train.image: "
                                      f"[resize, normalize]) or set model.image_encoder.cached: false")
                fp = enc.fingerprint(b.image_processor_specs(split))
                out[(entry, split)] = open_cache(cache_folder(enc.cache_dir, entry, split), fp, where, make)
        return out

    def _build(self, entry: str, split: str):
        """The data set of ``entry``/``split``, reading its feature cache when the model reads cached features."""
        data = self.builders[entry].build(split)
        cache = self.caches.get((entry, split))
        if cache is not None:
            if not hasattr(data, "feature_cache"):
                raise ConfigError(f"datasets.{entry} ({split}): its data set ({type(data).__name__}) cannot read "
                                  f"cached features; set model.image_encoder.cached: false")
            data.feature_cache = cache
        return data

    def _wrap(self, model: nn.Module) -> nn.Module:
        if dist.world_size() == 1 or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=self.cfg.find_unused_parameters)

    # ----------------------------------------------------------------------------------------- outputs
    def start_output(self) -> None:
        if dist.is_main():
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.yaml").write_text(to_yaml(self.exp))
            except OSError as e:
                raise ConfigError(f"run.output_dir: cannot write to {self.out} ({e.strerror or e}); set "
                                  f"run.output_dir to a folder you can write") from None
        dist.barrier()
        self.log = RunLog(self.out, self.cfg.tensorboard, first_step=self.it + 1)
        logger.info("model %s\n%s", self.exp.model["name"], parameter_table(self.model))

    def claim_output(self, resume: Optional[str], overwrite: bool) -> None:
        """Make ``output_dir`` this run's before anything is written: a folder holding another run's files is
        refused unless this run continues it (``--resume``, with a config that differs only in keys a
        continued run may change) or replaces it (``--overwrite`` deletes that run's files, nothing else).
        Temporary checkpoint files of a killed process are removed."""
        found = [name for name in RUN_FILES if (self.out / name).exists()]
        dist.barrier()  # every rank has looked before any rank deletes or writes: all decide alike
        if found and overwrite:
            if dist.is_main():
                for name in found:
                    path = self.out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            logger.warning("--overwrite: deleted the previous run's %s in %s", ", ".join(found), self.out)
        elif found and resume is None:
            raise ConfigError(f"run.output_dir {self.out} holds another run ({', '.join(found)}): continue it with "
                              f"--resume auto, replace it with --overwrite (deletes those files), or set "
                              f"run.output_dir to a new folder")
        elif found and (self.out / "config.yaml").is_file():
            changed = config_changes((self.out / "config.yaml").read_text(), to_yaml(self.exp))
            blocked = {k: v for k, v in changed.items() if not k.startswith(RESUME_MAY_CHANGE)}
            if blocked:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(blocked.items())[:8])
                raise ConfigError(f"--resume: run.output_dir {self.out} holds a run of another config ({shown}"
                                  f"{' ...' if len(blocked) > 8 else ''}); a continued run may change only "
                                  f"{', '.join(RESUME_MAY_CHANGE)}. Use another run.output_dir, or --overwrite")
            for k, (a, b) in changed.items():
                logger.info("--resume: %s changed since the run started: %r -> %r", k, a, b)
        if dist.is_main():
            checkpoint.remove_stale_temporaries(self.ckpt_dir)
        dist.barrier()  # rank 0 writes config.yaml only once every rank has decided

    def _train_mode(self) -> None:
        """Train mode, except frozen parts: they stay in eval mode (no dropout, fixed norm statistics)."""
        self.model.train()
        modules = dict(self.model.named_modules())
        for name in checkpoint.frozen_prefixes(self.model):
            modules[name].eval()

    def _autocast(self):
        if self.cfg.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _state(self) -> Dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "model_name": self.exp.model["name"],
            "model": checkpoint.trainable_state_dict(self.model),
            "frozen": checkpoint.frozen_prefixes(self.model),  # parts left out of "model"
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": dist.all_gather_objects(checkpoint.rng_state()),
            "iter": self.it,
            "best": self.best,
            "stream": _merge(dist.all_gather_objects(self.stream_positions)),
            "stream_readers": dist.world_size() * max(self.cfg.num_workers, 1),
            "config": to_yaml(self.exp),
        }

    def save(self, name: str) -> None:
        state = self._state()  # every rank joins the RNG gather
        if dist.is_main():
            checkpoint.save_atomic(state, self.ckpt_dir / name)
        dist.barrier()

    def _read_resume(self, resume: Optional[str]) -> Optional[Dict[str, Any]]:
        """``--resume auto|PATH``: read the checkpoint and load its weights (checking they fit), or None."""
        if resume is None:
            return None
        path = self.ckpt_dir / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            logger.info("--resume auto: no %s yet, starting from scratch", path)
            return None
        ckpt = checkpoint.load(path)
        if ckpt["model_name"] != self.exp.model["name"]:
            raise CheckpointError(f"checkpoint {path} holds model {ckpt['model_name']!r}, "
                                             f"this config builds {self.exp.model['name']!r}")
        checkpoint.load_model_weights(self.model, ckpt, str(path))
        ckpt["path"] = str(path)
        return ckpt

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        """Put optimizer, scaler, RNG and position back where the checkpoint left them."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        if len(rngs) != dist.world_size():
            logger.warning("checkpoint was written by %d processes, resuming with %d: RNG states restart",
                           len(rngs), dist.world_size())
        else:
            checkpoint.set_rng_state(rngs[dist.rank()])
        self.it, self.best = ckpt["iter"], ckpt["best"]
        self.stream_positions = {int(k): v for k, v in ckpt.get("stream", {}).items()}
        readers = dist.world_size() * max(self.cfg.num_workers, 1)
        if self.stream_positions and ckpt.get("stream_readers") != readers:
            logger.warning("the checkpoint's shard positions are of %s readers (ranks x workers), this run has %d: "
                           "the shards are read from the start; resume with the same processes and "
                           "run.num_workers to continue where the run stopped", ckpt.get("stream_readers"), readers)
            self.stream_positions = {}

    # ---------------------------------------------------------------------------------------------- data
    def _train_data(self) -> DataLoader:
        parts = [self._build(e, s) for e in self.builders for s in self.cfg.train_splits]
        streams = sum(map(is_stream, parts))
        if streams not in (0, len(parts)):
            raise ConfigError("datasets: some training entries are shards (streams) and some are map-style; train "
                              "on one kind (write the map-style ones as shards with python -m framework.make_shards)")
        ratios = {e: spec["sample_ratio"] for e, spec in self.exp.datasets.items()}
        if any(r is not None for r in ratios.values()):
            unset = [e for e, r in ratios.items() if r is None]
            if unset or any(r <= 0 for r in ratios.values()):
                raise ConfigError(f"datasets: sample_ratio is set for some entries; give every entry a positive "
                                  f"one (now {ratios})")
            weights = [ratios[e] for e in self.builders for _ in self.cfg.train_splits]
            mix = IterableMixture if streams else Mixture
            data = mix(parts, weights, self.cfg.seed)
        elif streams and len(parts) > 1:
            raise ConfigError("datasets: several shard entries train together only in ratios; give each a "
                              "sample_ratio")
        else:
            data = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        if streams:
            return stream_loader(data, self.cfg.batch_size, self.cfg.num_workers, self.pin)
        return train_loader(data, self.cfg.batch_size, self.cfg.seed, self.cfg.num_workers, self.cfg.shuffle, self.pin)

    def _iters_per_epoch(self, loader: DataLoader) -> int:
        per_iter = self.cfg.batch_size * self.cfg.accum_steps * dist.world_size()
        if is_stream(loader.dataset):
            return loader.dataset.samples_per_epoch // per_iter
        return len(loader) // self.cfg.accum_steps

    def eval_loaders(self, splits: List[str]) -> Dict[str, DataLoader]:
        bs = self.cfg.eval_batch_size or self.cfg.batch_size
        return {f"{entry}/{s}": eval_loader(self._build(entry, s), bs, self.cfg.num_workers, self.pin)
                for entry, b in self.builders.items() for s in splits if b.has_split(s)}

    # ---------------------------------------------------------------------------------------------- train
    def train(self, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
        self.claim_output(resume, overwrite)
        ckpt = self._read_resume(resume)  # a bad or mismatched checkpoint fails before output is written
        loader = self._train_data()
        iters_per_epoch = self._iters_per_epoch(loader)
        stream = is_stream(loader.dataset)
        if iters_per_epoch == 0:
            n = loader.dataset.samples_per_epoch if stream else len(loader.dataset)
            raise ConfigError(f"the training data has {n} samples: fewer than one optimizer "
                             f"step of batch_size={self.cfg.batch_size} x accum_steps={self.cfg.accum_steps} "
                             f"x {dist.world_size()} processes")
        total = self.cfg.max_iters or self.cfg.max_epochs * iters_per_epoch
        self.optimizer = build_optimizer(self.model, self.cfg.optimizer)
        self.schedule = build_schedule(self.cfg.optimizer, total, iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp == "fp16")
        if ckpt is not None:
            self._restore(ckpt)
        # the log continues the checkpoint's timeline; without one (none yet, or a run killed before its first)
        # a killed run's records go
        truncate_after(self.out / "log.jsonl", self.it)
        self.start_output()
        if ckpt is not None:
            logger.info("resumed from %s at iteration %d", ckpt["path"], self.it)
        evals = self.eval_loaders(self.cfg.eval_splits)
        self.best_key = f"{next(iter(evals))}/{self.task.best_metric}" if evals else None
        # in a log file (no terminal) a progress line every 30 s, not a flood of carriage returns
        bar = tqdm(total=total, initial=self.it, desc="train", disable=not dist.is_main(), dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        profiler = self._profiler()
        self._train_mode()
        try:
            while self.it < total:
                epoch, done = divmod(self.it, iters_per_epoch)
                if stream:
                    set_stream_position(loader, self.stream_positions, self.it * self.cfg.accum_steps,
                                        self.cfg.shuffle)
                else:
                    set_position(loader, epoch, done * self.cfg.accum_steps)
                batches = iter(loader)
                for _ in range(done, iters_per_epoch):
                    self._step(batches, epoch, bar)
                    if profiler is not None:
                        profiler.step()
                    end_of_epoch = self.it % iters_per_epoch == 0
                    self._maybe_eval_and_save(evals, end_of_epoch, self.it == total)
                    if self.it >= total:
                        break
        finally:
            bar.close()
            if profiler is not None:
                profiler.stop()
        metrics = self._final_test()
        self.log.close()
        return metrics

    def _step(self, batches, epoch: int, bar: tqdm) -> None:
        t0 = time.perf_counter()
        lr = self.schedule(self.it)
        set_lr(self.optimizer, lr)
        sums: Dict[str, torch.Tensor] = {}
        n_samples = 0
        for micro in range(self.cfg.accum_steps):
            batch = next(batches)
            for slot, position in batch.pop("_stream", []):  # in order: a slot's last sample is its position
                self.stream_positions[slot] = position
            batch = _to_device(batch, self.device)
            n_samples += _batch_len(batch)
            sync = micro == self.cfg.accum_steps - 1 or not isinstance(self.ddp_model, nn.parallel.DistributedDataParallel)
            with (nullcontext() if sync else self.ddp_model.no_sync()), self._autocast():
                losses = self.task.train_step(self.ddp_model, batch)
            self.scaler.scale(losses["loss"] / self.cfg.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / self.cfg.accum_steps
        names = sorted(sums)
        reduced = dist.all_reduce_mean(torch.stack([sums[k] for k in names])).cpu()
        values = dict(zip(names, reduced.tolist()))
        # the term that went non-finite, not their sum
        bad = sorted((k for k, v in values.items() if not math.isfinite(v)), key=lambda k: (k == "loss", k))
        if bad:
            last = self.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"iteration {self.it + 1}: loss term {bad[0]!r} is {values[bad[0]]} "
                                     f"(all terms: {values}); stopped before the optimizer step, {kept}. "
                                     f"Lower run.optimizer.lr, set run.grad_clip, or check the data.")
        grad_norm = None
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.it += 1
        dt = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.it % self.cfg.log_every == 0 or self.it == 1:
            record = {"epoch": epoch, "lr": lr, **values, "sec_per_iter": dt,
                      "samples_per_sec": n_samples * dist.world_size() / dt}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if self.stream_positions:  # this rank's readers: samples and shards skipped as unreadable
                record |= _bad_data(self.stream_positions)
            self.log.write("train", self.it, record)

    def _maybe_eval_and_save(self, evals: Dict[str, DataLoader], end_of_epoch: bool, last: bool) -> None:
        every = self.cfg.eval_every
        due_eval = (self.it % every == 0) if every else (end_of_epoch if not self.cfg.max_iters else last)
        if due_eval and evals:
            metrics = self.evaluate(evals)
            self._update_best(metrics)
        ce = self.cfg.checkpoint_every
        if due_eval or last or end_of_epoch or (ce and self.it % ce == 0):
            self.save("last.pt")

    def _update_best(self, metrics: Dict[str, float]) -> None:
        key = self.best_key
        if key not in metrics:
            logger.warning("task metric %r not among the evaluation metrics %s: best.pt not updated",
                           self.task.best_metric, sorted(metrics))
            return
        value = metrics[key]
        better = (not self.best or (value > self.best["value"] if self.task.best_mode == "max"
                                    else value < self.best["value"]))
        if better:
            self.best = {"metric": key, "value": value, "iter": self.it}
            self.save("best.pt")
            logger.info("new best %s = %.4f at iteration %d", key, value, self.it)

    @torch.no_grad()
    def evaluate(self, loaders: Dict[str, DataLoader]) -> Dict[str, float]:
        self.model.eval()
        metrics: Dict[str, float] = {}
        for name, loader in loaders.items():
            self.task.prediction_file = self.out / "predictions" / f"{name.replace('/', '_')}_iter{self.it}.json"
            with self._autocast():
                result = self.task.evaluate(self.model, loader)
            metrics.update({f"{name}/{k}": float(v) for k, v in result.items()})
        self._train_mode()
        self.log.write("eval", self.it, metrics)
        logger.info("iteration %d: %s", self.it, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def _final_test(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"iter": self.it, "best": self.best}
        if self.cfg.test_splits:
            best = self.ckpt_dir / "best.pt"
            if best.exists():
                checkpoint.load_model_weights(self.model, checkpoint.load(best), str(best))
            result["test"] = self.evaluate(self.eval_loaders(self.cfg.test_splits))
        self.write_metrics(result)
        return result

    def evaluate_only(self) -> Dict[str, Any]:
        """Evaluate eval and test splits once (``framework.evaluate``); writes metrics.json."""
        self.start_output()
        splits = list(dict.fromkeys(self.cfg.eval_splits + self.cfg.test_splits))
        result = {"checkpoint": self.exp.model.get("checkpoint"), "eval": self.evaluate(self.eval_loaders(splits))}
        self.write_metrics(result)
        self.log.close()
        return result

    def write_metrics(self, result: Dict[str, Any]) -> None:
        if dist.is_main():
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    def _profiler(self):
        if not self.cfg.profile:
            return None
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        prof = profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=self.cfg.profile_steps, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(self.out / "profile")), record_shapes=True)
        prof.start()
        return prof


def _merge(dicts: List[Dict[int, Any]]) -> Dict[int, Any]:
    return {k: v for d in dicts for k, v in d.items()}


def _bad_data(positions: Dict[int, Any]) -> Dict[str, int]:
    """Corrupt samples and bad shards met by these readers so far (a mixture's position holds its parts')."""
    flat = [p for pos in positions.values() for p in (pos["parts"] if "parts" in pos else [pos]) if p]
    return {"data_bad_samples": sum(p["bad_samples"] for p in flat),
            "data_bad_shards": sum(p["bad_shards"] for p in flat)}


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_len(batch: Dict[str, Any]) -> int:
    for v in batch.values():
        return len(v)
    return 0
