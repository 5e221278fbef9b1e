"""Parts registered by the tests themselves (listed under ``plugins:`` in test configs)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from framework.core import dist
from framework.core.registry import DATASETS, MODELS, PROCESSORS, TASKS, build
from framework.core.schema import Part
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.engine.task import Task
from framework.models.frozen import hold_in_eval
from framework.models.image_encoder import example_images
from plugins.models.dual_encoder import hash_tokens
from plugins.tasks.captioning import Captioning


@MODELS.register("toy_captioner")
class ToyCaptioner(nn.Module):
    """Predicts the caption's hashed words from the image: a per-sample loss, so one process with batch 8
    and two with batch 4 compute the same gradient."""

    def __init__(self, image_encoder: Part("image_encoder"), vocab: int = 64, dropout: float = 0.1,
                 nan_at_step: Optional[int] = None, sleep_s: float = 0.0, freeze_encoder: bool = False,
                 log_keys: bool = False, stop_rank_at_step: Optional[List[int]] = None) -> None:
        super().__init__()
        self.image_encoder = build("image_encoder", image_encoder).requires_grad_(not freeze_encoder)
        if freeze_encoder:  # a part frozen by the model itself: the framework's rule keeps it in eval mode
            hold_in_eval(self.image_encoder)
        self.modes_seen: set = set()
        self.norm = nn.LayerNorm(self.image_encoder.num_features)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.image_encoder.num_features, vocab)
        self.vocab, self.nan_at_step, self.sleep_s, self.log_keys = vocab, nan_at_step, sleep_s, log_keys
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.stop_rank_at_step = stop_rank_at_step  # [rank, step]: that rank stops itself (SIGSTOP), as a hung one

    def example_batch(self, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        return dict(image=example_images(self.image_encoder, batch_size),
                    text_input=[" ".join(["w"] * text_tokens)] * batch_size)

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        self.steps += 1
        if self.stop_rank_at_step and [dist.rank(), int(self.steps)] == list(self.stop_rank_at_step):
            os.kill(os.getpid(), signal.SIGSTOP)
        self.modes_seen.add((self.image_encoder.training, self.head.training))
        logits = self.head(self.drop(self.norm(self.image_encoder(batch["image"]).mean(1))))
        ids = hash_tokens(batch["text_input"], self.vocab, 16).to(logits.device)
        target = torch.zeros_like(logits).scatter_(1, ids, 1.0)[:, 1:]
        loss_words = F.binary_cross_entropy_with_logits(logits[:, 1:], target)
        loss_l2 = 1e-3 * logits.pow(2).mean()
        if self.nan_at_step is not None and int(self.steps) == self.nan_at_step:
            loss_words = loss_words * float("nan")
        out = {"loss": loss_words + loss_l2, "loss_words": loss_words, "loss_l2": loss_l2}
        if self.log_keys:  # which samples (numeric shard keys) each iteration trained on, through the run's log
            out |= {f"key_{i}": torch.tensor(float(k)) for i, k in enumerate(batch["key"])}
        return out


@TASKS.register("toy_task")
class ToyTask(Task):
    """Trains with the model's loss; evaluation reports the mean loss (lower is better)."""

    best_metric, best_mode = "loss", "min"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        total, n = 0.0, 0
        for batch in loader:
            batch = {**batch, "text_input": [c[0] for c in batch["captions"]]}
            total += float(model(batch)["loss"]) * len(batch["image"])
            n += len(batch["image"])
        parts = dist.all_gather_objects((total, n))
        return {"loss": sum(t for t, _ in parts) / sum(c for _, c in parts)}


class _Files(Dataset):
    def __len__(self) -> int:
        return 0


@DATASETS.register("toy_files")
class ToyFiles(DatasetBuilder):
    """A builder over files the user must provide (to test missing-data errors)."""

    how_to_get = "Download toy.json from https://example.org/toy and put it in the folder named by 'root'."

    def __init__(self, entry: str, *, processors: Optional[ProcessorSpecs] = None, root: str = "/nonexistent") -> None:
        super().__init__(entry, processors=processors)
        self.root = Path(root)

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(self.root / f"toy_{s}.json", f"{s} annotations") for s in splits]

    def build(self, split: str) -> Dataset:
        return _Files()


@TASKS.register("frozen_randomness_probe")
class FrozenRandomnessProbe(Captioning):
    """Captioning's training step, plus ``second_pass_differs``: 1 when running the model a second time on the
    same batch, in the mode the runner put it in, gives another loss. With the Q-Former's dropout off and the
    image encoder frozen (eval), only the frozen LLM's dropout can make it differ; logged as a loss term, so it
    reaches ``log.jsonl`` from every real run (DDP, compile, resume)."""

    def train_step(self, model: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        out = super().train_step(model, batch)
        with torch.no_grad():  # the unwrapped model: a DDP wrapper expects one forward per backward
            again = super().train_step(getattr(model, "module", model), batch)["loss"]
        return {**out, "second_pass_differs": (again != out["loss"].detach()).float()}


@PROCESSORS.register("slow")
class Slow:
    """Passes the image through after ``sleep_s`` seconds: a data pipeline slower than the model."""

    def __init__(self, sleep_s: float = 0.05) -> None:
        self.sleep_s = sleep_s

    def __call__(self, img: Any) -> Any:
        time.sleep(self.sleep_s)
        return img

