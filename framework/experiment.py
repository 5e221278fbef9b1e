"""An experiment: the root config schema (``ExperimentConfig`` and the ``run:`` section, ``RunConfig``), the machine
it runs on (device, determinism, seeds), the output folder it owns, and its data (builders, data sets per split,
loaders, feature caches). The training loop itself is :mod:`framework.runner`; entry points that train nothing
(``predict``, ``cache_features``, ``make_shards``) import this module only.

An *iteration* is one optimizer step: ``accum_steps`` micro-batches of ``batch_size`` samples on each of
the ``world_size`` processes. Learning rate, logging, evaluation and checkpoints all count iterations.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from framework import checkpoint, dist, resources
from framework.config import DatasetsOf, config_changes, load_config, to_yaml, validate
from framework.data.builder import DatasetBuilder
from framework.data.feature_cache import cache_folder, open_cache, random_processors
from framework.data.loader import IterableMixture, Mixture, eval_loader, is_stream, stream_loader, train_loader
from framework.errors import CheckpointError, ConfigError
from framework.models.interfaces import CachesFeatures, ReadsFeatureCache
from framework.logs import logger
from framework.optim import OptimConfig
from framework.registry import DATASETS, Length, Part, Range, build, load_plugin_modules


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
    compile: ``torch.compile`` each of the model's parts (its child modules: image encoder, Q-Former, LLM adapter,
    heads) in place; the code around them (losses, negatives, tokenizing, decoding loops) stays eager, and
    checkpoints keep their keys. compile_backend: torch's backend for it: inductor generates fused kernels (on CPU
    it needs a C++ compiler, and the first step takes minutes); aot_eager and eager trace without generating code
    (to check that a model compiles, cheaply). Measured effect: docs/benchmarks.md.
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
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"


@dataclass
class ExperimentConfig:
    """The whole config. ``model`` / ``task``: a registered part and its arguments; ``datasets``: entries of
    ``datasets_cfg/`` with overrides; ``run``: :class:`RunConfig`; ``plugins``: extra modules to import."""
    model: Part("model")
    task: Part("task")
    datasets: Annotated[Dict[str, Any], DatasetsOf()]
    run: RunConfig = field(default_factory=RunConfig)
    plugins: List[str] = field(default_factory=list)


# What a run writes into output_dir: another run's set of these makes the folder taken (claim_output).
RUN_FILES = ("config.yaml", "log.jsonl", "train.log", "metrics.json", "checkpoints", "tensorboard", "predictions",
             "profile")
# Keys a continued run (--resume) may change: how long it runs, what and how often it evaluates and saves,
# and how it is executed; everything else would make the continued run another experiment.
RESUME_MAY_CHANGE = ("run.output_dir", "run.device", "run.max_iters", "run.max_epochs", "run.eval_every",
                     "run.eval_splits", "run.test_splits", "run.eval_batch_size", "run.log_every",
                     "run.checkpoint_every", "run.num_workers", "run.profile", "run.profile_steps",
                     "run.tensorboard", "run.dist_timeout_s", "run.compile", "run.compile_backend")


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


def prepare_data(exp: ExperimentConfig) -> Dict[str, DatasetBuilder]:
    """A builder per ``datasets:`` entry, its files checked (or generated) for the run's splits: done before any
    model is built, so missing data fails in seconds, not after loading an LLM."""
    if not exp.datasets:
        raise ConfigError(f"datasets: no data set is named; add an entry named after a file of "
                          f"{resources.root() / 'datasets_cfg'} (datasets: {{NAME: {{}}}}) or your own "
                          f"(docs/recipes/)")
    found = builders(exp)
    for b in found.values():
        b.prepare(run_splits(exp.run))
    return found


def run_splits(cfg: RunConfig) -> List[str]:
    """The splits a run reads: training, evaluation and test, each once."""
    return list(dict.fromkeys(cfg.train_splits + cfg.eval_splits + cfg.test_splits))


class ExperimentData:
    """The experiment's data for a built model: the data sets per split (reading the frozen-feature caches where
    a part of ``model`` reads cached features), the training and evaluation loaders. ``prepared``: the checked
    builders of :func:`prepare_data`."""

    def __init__(self, exp: ExperimentConfig, prepared: Dict[str, DatasetBuilder], model: nn.Module,
                 pin_memory: bool = False) -> None:
        self.exp, self.cfg, self.pin = exp, exp.run, pin_memory
        self.builders = prepared
        self.splits = run_splits(exp.run)
        self.caches: Dict[tuple, Any] = self._open_caches(model)

    def _open_caches(self, model: nn.Module) -> Dict[tuple, Any]:
        """Per (entry, split), the frozen-feature cache its data set reads, when a part of the model reads cached
        features (``cached: true``); refused, with the reason, where a cache cannot stand in for the images."""
        readers = [m for m in model.modules() if isinstance(m, CachesFeatures) and m.cached]
        if not readers:
            return {}
        enc = readers[0]
        make = "python -m framework.cache_features --cfg <this experiment's config>"
        caches = {}
        for entry, b in self.builders.items():
            for split in self.splits:
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
                caches[(entry, split)] = open_cache(cache_folder(enc.cache_dir, entry, split), fp, where, make)
        return caches

    def build(self, entry: str, split: str) -> Dataset:
        """The data set of ``entry``/``split``, reading its feature cache when the model reads cached features."""
        data = self.builders[entry].build(split)
        cache = self.caches.get((entry, split))
        if cache is not None:
            if not isinstance(data, ReadsFeatureCache):
                raise ConfigError(f"datasets.{entry} ({split}): its data set ({type(data).__name__}) cannot read "
                                  f"cached features; set model.image_encoder.cached: false")
            data.feature_cache = cache
        return data

    def training_loader(self) -> DataLoader:
        # every entry trains on the training splits it has (Visual Genome QA has train only beside VQAv2's
        # train + val); an entry with none of them is a config mistake
        pairs = [(e, s) for e, b in self.builders.items() for s in self.cfg.train_splits if b.has_split(s)]
        idle = [e for e in self.builders if e not in {p[0] for p in pairs}]
        if idle:
            raise ConfigError(f"datasets.{idle[0]}: has none of the training splits {self.cfg.train_splits} "
                              f"(run.train_splits); remove the entry or train on a split it has")
        parts = [self.build(e, s) for e, s in pairs]
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
            weights = [ratios[e] for e, _ in pairs]
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

    def iters_per_epoch(self, loader: DataLoader) -> int:
        per_iter = self.cfg.batch_size * self.cfg.accum_steps * dist.world_size()
        if is_stream(loader.dataset):
            return loader.dataset.samples_per_epoch // per_iter
        return len(loader) // self.cfg.accum_steps

    def eval_loaders(self, splits: List[str]) -> Dict[str, DataLoader]:
        bs = self.cfg.eval_batch_size or self.cfg.batch_size
        return {f"{entry}/{s}": eval_loader(self.build(entry, s), bs, self.cfg.num_workers, self.pin)
                for entry, b in self.builders.items() for s in splits if b.has_split(s)}


def load_experiment(path: str, options: Sequence[str] = (), schema: type = ExperimentConfig) -> Any:
    """Load, override and validate a config; import the plugins it lists first so their names resolve."""
    raw, origins = load_config(path, options)
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins: expected a list of module paths, got {plugins!r} "
                          f"(set in {origins.get('plugins')})")
    load_plugin_modules(plugins)
    return validate(raw, schema, origins)


@dataclass
class ModelFile:
    """A file that holds a ``model:`` section alone: a converter's ``model.yaml``, a ``_base_`` to inherit."""
    model: Part("model")
    plugins: List[str] = field(default_factory=list)


def load_model_file(path: str | Path, options: Sequence[str] = ()) -> Dict[str, Any]:
    """The validated ``model:`` section of a model-only file."""
    return load_experiment(str(path), options, ModelFile).model
