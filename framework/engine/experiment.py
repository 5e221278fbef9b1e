"""An experiment's config: the root schema (``ExperimentConfig``, with the ``run:`` section, ``RunConfig``) and the
loading of a config file into it (``load_experiment``; ``load_model_file`` for a file that holds a ``model:`` alone).
What a run does with it lives beside this module: the machine (:mod:`framework.engine.machine`), the output folder
(:mod:`framework.engine.output`), the data (:mod:`framework.engine.experiment_data`), the loop
(:mod:`framework.engine.runner`).

An *iteration* is one optimizer step: ``accum_steps`` micro-batches of ``batch_size`` samples on each of
the ``world_size`` processes. Learning rate, logging, evaluation and checkpoints all count iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence

from framework.core.config import DatasetsOf, load_config, validate
from framework.core.errors import ConfigError
from framework.core.registry import load_plugin_modules
from framework.core.schema import Length, Part, Range
from framework.engine.fsdp import FsdpConfig
from framework.engine.optim import OptimConfig


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
    strategy: how several processes (torchrun) train together: ``ddp`` (each holds the whole model; gradients
    averaged: the paper's set-up) or ``fsdp`` (weights, gradients and optimizer state sharded over them, for models
    that do not fit a device each; set up by ``fsdp``: :class:`framework.engine.fsdp.FsdpConfig`). One process
    trains alone under either. Checkpoints are the same under both: a run resumes under the other, and the
    converters read either. Memory of each: ``--dry-run``; multi-node launch: docs/recipes/fsdp_multi_node.md.
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
    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
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
