"""The training / evaluation loop. What it runs (the config schema, the machine, the data) is
:mod:`framework.engine.experiment`; what it saves and resumes from is :mod:`framework.core.checkpoint`."""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from framework.core import checkpoint, dist
from framework.core.config import to_yaml
from framework.core.errors import ConfigError, NonFiniteLossError
from framework.core.logs import RunLog, console_has_bar, logger, truncate_after
from framework.core.registry import build
from framework.data.loader import is_stream, set_position, set_stream_position
from framework.engine import fsdp
from framework.engine.experiment import ExperimentConfig
from framework.engine.experiment_data import ExperimentData, prepare_data
from framework.engine.machine import run_device, seed_everything, set_determinism
from framework.engine.optim import build_optimizer, build_schedule, set_lr
from framework.engine.output import check_writable, claim_evaluation, claim_output
from framework.engine.task import Task
from framework.models.build import (
    build_model,
    checkpoint_of,
    compile_parts,
    parameter_table,
)


class Runner:
    """Builds everything from a validated :class:`ExperimentConfig`, then trains and evaluates.

    Construction checks data files and builds the model before anything is written to ``output_dir``, so a
    bad config or missing data leaves no half-written run behind.
    """

    def __init__(self, exp: ExperimentConfig) -> None:
        self.exp, self.cfg = exp, exp.run
        self.device = run_device(self.cfg)
        set_determinism(self.cfg, self.device)
        dist.init(self.device, self.cfg.dist_timeout_s)
        if self.cfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("run.amp=fp16 needs CUDA (it uses a GradScaler); on CPU use run.amp=bf16 or off")
        fsdp.check(self.cfg)
        self.out = Path(self.cfg.output_dir)
        check_writable(self.out)
        prepared = prepare_data(exp)  # data files checked before the model is built
        seed_everything(self.cfg.seed)  # same init on every rank
        self.task: Task = build("task", exp.task)
        self.model: nn.Module = build_model(exp.model).to(self.device)
        # pinned: the copy overlaps the step
        self.data = ExperimentData(exp, prepared, self.model, pin_memory=self.device.type == "cuda")
        if self.cfg.compile:
            compile_parts(self.model, self.cfg.compile_backend)
        seed_everything(self.cfg.seed + dist.rank())
        self.ddp_model = self._wrap(self.model)
        self.it = 0
        self.best: Dict[str, Any] = {}
        self.stream_positions: Dict[int, Any] = {}  # reader slot -> position, for training on shards

    def _wrap(self, model: nn.Module) -> nn.Module:
        if dist.world_size() == 1:
            return model
        if self.cfg.strategy == "fsdp":
            return fsdp.shard(model, self.cfg.fsdp, self.device)  # in place: self.model is it
        if not any(p.requires_grad for p in model.parameters()):
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
        table = parameter_table(self.model)
        logger.info("model %s\n%s", self.exp.model["name"], table)
        self.log.text("model/parameters", f"{self.exp.model['name']}\n{table}", self.it)

    def _autocast(self):
        amp = fsdp.autocast_precision(self.cfg)
        if amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _state(self) -> Dict[str, Any]:
        return checkpoint_of(
            self.model, self.exp.model["name"], optimizer=checkpoint.optimizer_state(self.optimizer),
            scaler=self.scaler.state_dict(), rng=dist.all_gather_objects(checkpoint.rng_state()), iter=self.it,
            best=self.best, stream=dist.gather_dict(self.stream_positions),
            stream_readers=self._readers(), config=to_yaml(self.exp))

    def _readers(self) -> int:
        """Shard readers of the job: ranks x dataloader workers (a stream position belongs to one of them)."""
        return dist.world_size() * max(self.cfg.num_workers, 1)

    def save(self, name: str) -> None:
        state = self._state()  # every rank joins the RNG gather
        if dist.is_main():
            checkpoint.save_atomic(state, self.ckpt_dir / name)
        dist.barrier()

    # ---------------------------------------------------------------------------------------------- data
    # ---------------------------------------------------------------------------------------------- train
    def train(self, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
        # a bad or mismatched checkpoint or config fails before output is written
        ckpt = claim_output(self.out, self.exp, resume, overwrite, self.exp.model["name"])
        if ckpt is not None:
            checkpoint.load_model_weights(self.model, ckpt, ckpt["path"])
        loader = self.data.training_loader()
        iters_per_epoch = self.data.iters_per_epoch(loader)
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
            self.it, self.best, self.stream_positions = checkpoint.restore(ckpt, self.optimizer, self.scaler,
                                                                          self._readers())
        # the log continues the checkpoint's timeline; without one (none yet, or a run killed before its first)
        # a killed run's records go
        truncate_after(self.out / "log.jsonl", self.it)
        self.start_output()
        if ckpt is not None:
            logger.info("resumed from %s at iteration %d", ckpt["path"], self.it)
        evals = self.data.eval_loaders(self.cfg.eval_splits)
        self.best_key = f"{next(iter(evals))}/{self.task.best_metric}" if evals else None
        # a bar on a terminal; in a log file (no terminal) the plain lines RunLog writes every log step instead
        bar = tqdm(total=total, initial=self.it, desc="train", disable=not (dist.is_main() and console_has_bar()),
                   dynamic_ncols=True, mininterval=0.5)
        profiler = self._profiler()
        # what follows each step, in order, given the step's record: progress and log, the profiler, evaluation
        # and checkpoints
        after_step: List[Callable[[Dict[str, Any]], None]] = [lambda record: self._log_step(record, bar)]
        if profiler is not None:
            after_step.append(lambda record: profiler.step())
        after_step.append(lambda record: self._maybe_eval_and_save(evals, self.it % iters_per_epoch == 0,
                                                                   self.it == total))
        self.model.train()  # each part owns its mode when frozen: framework.models.frozen
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
                    record = {"epoch": epoch, **self._step(batches)}
                    for hook in after_step:
                        hook(record)
                    if self.it >= total:
                        break
        finally:
            bar.close()
            if profiler is not None:
                profiler.stop()
        metrics = self._final_test()
        self.log.close()
        return metrics

    def _step(self, batches: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        """One optimizer step; returns its record (lr, every loss term, grad_norm, timings)."""
        t0 = time.perf_counter()
        lr = self.schedule(self.it)
        set_lr(self.optimizer, lr)
        losses, n_samples, data_time = self._forward_backward(batches)
        self._stop_if_not_finite(losses)
        grad_norm = self._update()
        self.it += 1
        dt = time.perf_counter() - t0
        record = {"lr": lr, **losses, "sec_per_iter": dt, "data_time": data_time, "step_time": dt - data_time,
                  "samples_per_sec": n_samples * dist.world_size() / dt}
        return record if grad_norm is None else {**record, "grad_norm": grad_norm}

    def _forward_backward(self, batches: Iterator[Dict[str, Any]]) -> Tuple[Dict[str, float], int, float]:
        """``accum_steps`` micro-batches through the task's training step and backward: (every loss term averaged
        over micro-batches and ranks, samples seen here, seconds spent waiting for the loader)."""
        sums: Dict[str, torch.Tensor] = {}
        n_samples = 0
        data_time = 0.0  # waiting for the loader: a slow data pipeline shows here, not in step_time
        ddp = isinstance(self.ddp_model, nn.parallel.DistributedDataParallel)
        sharded = fsdp.is_sharded(self.model)
        for micro in range(self.cfg.accum_steps):
            t_data = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - t_data
            for slot, position in batch.pop("_stream", []):  # in order: a slot's last sample is its position
                self.stream_positions[slot] = position
            batch = _to_device(batch, self.device)
            n_samples += _batch_len(batch)
            last = micro == self.cfg.accum_steps - 1  # gradients are reduced over the ranks on the last only
            if sharded:
                self.model.set_requires_gradient_sync(last)
            with (nullcontext() if last or not ddp else self.ddp_model.no_sync()), self._autocast():
                losses = self.task.train_step(self.ddp_model, batch)
            self.scaler.scale(losses["loss"] / self.cfg.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / self.cfg.accum_steps
        if sharded:
            fsdp.average_whole_gradients(self.model)
        names = sorted(sums)
        reduced = dist.all_reduce_mean(torch.stack([sums[k] for k in names])).cpu()
        return dict(zip(names, reduced.tolist())), n_samples, data_time

    def _stop_if_not_finite(self, losses: Dict[str, float]) -> None:
        """Stop before the optimizer step, naming the term that went non-finite (not their sum)."""
        bad = sorted((k for k, v in losses.items() if not math.isfinite(v)), key=lambda k: (k == "loss", k))
        if bad:
            last = self.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"iteration {self.it + 1}: loss term {bad[0]!r} is {losses[bad[0]]} "
                                     f"(all terms: {losses}); stopped before the optimizer step, {kept}. "
                                     f"Lower run.optimizer.lr, set run.grad_clip, or check the data.")

    def _update(self) -> Optional[float]:
        """Clip (``run.grad_clip``; returns the norm before clipping), step the optimizer, clear the gradients."""
        grad_norm = None
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(dist.full(nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _log_step(self, record: Dict[str, Any], bar: tqdm) -> None:
        """The progress bar every step; ``log.jsonl`` (and the plain log lines) every ``log_every`` and the first."""
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        if self.it % self.cfg.log_every == 0 or self.it == 1:
            if self.stream_positions:  # this rank's readers: samples and shards skipped as unreadable
                record = record | _bad_data(self.stream_positions)
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
            written = self.out / "predictions" / f"{name.replace('/', '_')}_iter{self.it}.json"
            with self._autocast(), fsdp.gathered(self.model, self.cfg.fsdp):
                result = self.task.evaluate(self.model, loader, written)
            metrics.update({f"{name}/{k}": float(v) for k, v in result.items()})
            if dist.is_main() and written.is_file():  # a few predictions beside the curves, to read
                samples = json.loads(written.read_text())[:5]
                self.log.text(f"predictions/{name}", "\n".join(json.dumps(r) for r in samples), self.it)
        self.model.train()
        self.log.write("eval", self.it, metrics)
        logger.info("iteration %d: %s", self.it, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def _final_test(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"iter": self.it, "best": self.best}
        if self.cfg.test_splits:
            best = self.ckpt_dir / "best.pt"
            if best.exists():
                checkpoint.load_model_weights(self.model, checkpoint.load(best), str(best))
            result["test"] = self.evaluate(self.data.eval_loaders(self.cfg.test_splits))
        self.write_metrics(result)
        return result

    def evaluate_only(self, overwrite: bool = False) -> Dict[str, Any]:
        """Evaluate eval and test splits once (``framework.evaluate``); writes metrics.json into the folder
        :func:`framework.engine.output.claim_evaluation` gives (a training run's own files are never touched)."""
        self.out = claim_evaluation(self.out, self.exp.model.get("checkpoint"), overwrite)
        self.start_output()
        splits = list(dict.fromkeys(self.cfg.eval_splits + self.cfg.test_splits))
        result = {"checkpoint": self.exp.model.get("checkpoint"), "eval": self.evaluate(self.data.eval_loaders(splits))}
        self.write_metrics(result)
        self.log.close()
        return result

    def write_metrics(self, result: Dict[str, Any]) -> None:
        if dist.is_main():
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    def _profiler(self):
        if not self.cfg.profile:
            return None
        from torch.profiler import (
            ProfilerActivity,
            profile,
            schedule,
            tensorboard_trace_handler,
        )

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        prof = profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=self.cfg.profile_steps, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(self.out / "profile")), record_shapes=True)
        prof.start()
        return prof


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
