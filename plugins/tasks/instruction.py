"""``instruction``: instruction tuning and its evaluation (InstructBLIP) on samples with an ``instruction`` and its
output: the ``records`` builder's ``kind: instruction`` (``{"image", "instruction", "output"}``), several sets
mixed with ``sample_ratio``, templates applied by the ``instruction_template`` processor.

Training: the LM loss of the output after [visual prompt, instruction] (the instruction is not in the loss; with
``model.qformer_text_input`` the Q-Former reads it too, as InstructBLIP's). Evaluation: an output is generated per
instruction and scored against the record's outputs, ``metric: exact`` (short answers: the share of outputs
equal to one of the references after the VQA answer normalisation) or ``caption`` (free text: BLEU, METEOR,
ROUGE-L, CIDEr). Predictions go to ``<output_dir>/predictions`` as ``[{"record_id", "instruction", "output"}]``
(``record_id``: the record's line in its file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Literal, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.core.registry import TASKS
from framework.engine.task import Task
from framework.models.interfaces import Generative
from plugins.tasks.captioning import SPICE_UNAVAILABLE, caption_metrics
from plugins.tasks.vqa import normalize_answer

NEEDS = ("the instruction task reads samples with 'instruction' and 'text_output' (training) or 'outputs' "
         "(evaluation): a records entry with kind: instruction")


def _check(batch: Dict, key: str) -> None:
    if key not in batch or "instruction" not in batch:
        have = sorted(k for k in batch if k != "image")
        raise ConfigError(f"task instruction: the batch has no {key!r} (it has {have}); {NEEDS}")


@TASKS.register("instruction")
class Instruction(Task):
    """Args:
        metric: ``exact`` (short answers; best checkpoint by ``accuracy``) or ``caption`` (free text; by ``cider``).
        num_beams, max_new_tokens, min_length, length_penalty, repetition_penalty, do_sample, top_p: decoding,
            LAVIS's InstructBLIP ``generate`` defaults: beam 5, max_length 256 (as new tokens; for Vicuna LAVIS's
            count includes the start token transformers puts first, so 255 equals it), min_length 1 (counted as
            LAVIS counts it), repetition penalty 1.5, length penalty 1, nucleus sampling off (top_p 0.9 with it).
        min_new_tokens: when set, the shortest output in generated tokens, replacing ``min_length``.
    """

    def __init__(self, metric: Literal["exact", "caption"] = "exact", num_beams: int = 5, max_new_tokens: int = 256,
                 min_length: int = 1, min_new_tokens: Optional[int] = None, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.5, do_sample: bool = False, top_p: float = 0.9) -> None:
        self.metric = metric
        self.best_metric, self.best_mode = ("accuracy" if metric == "exact" else "cider"), "max"
        self.decoding = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, min_length=min_length,
                             min_new_tokens=min_new_tokens, length_penalty=length_penalty,
                             repetition_penalty=repetition_penalty, do_sample=do_sample, top_p=top_p)

    def example_batch(self, model: nn.Module, batch_size: int, text_tokens: int) -> Dict:
        """The model's batch with its text as each instruction and as each output."""
        batch = model.example_batch(batch_size, text_tokens)
        return batch | {"instruction": list(batch["text_input"]), "text_output": list(batch["text_input"])}

    def train_step(self, model: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        _check(batch, "text_output")
        return model({**batch, "prompt": list(batch["instruction"]), "text_input": list(batch["text_output"])})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        self.require(model, Generative, "a generative model such as blip2_generative")
        device = next(model.parameters()).device
        local = {}
        for batch in loader:
            _check(batch, "outputs")
            outputs = model.generate(batch["image"].to(device), list(batch["instruction"]), **self.decoding)
            for rid, instruction, out, refs in zip(batch["record_id"].tolist(), batch["instruction"], outputs,
                                                   batch["outputs"]):
                local[rid] = (instruction, out, refs)
        merged = dist.gather_dict(local)
        self.save_predictions([{"record_id": r, "instruction": i, "output": o}
                               for r, (i, o, _) in sorted(merged.items())], predictions)
        return self.score({r: (o, refs) for r, (_, o, refs) in merged.items()})

    def score(self, results: Dict[int, Tuple[str, list]]) -> Dict[str, float]:
        """``accuracy`` (exact) or the caption metrics (caption) of {record: (output, reference outputs)}."""
        if self.metric == "caption":
            logger.info(SPICE_UNAVAILABLE)
            return caption_metrics({r: refs for r, (_, refs) in results.items()},
                                   {r: o for r, (o, _) in results.items()})
        hits = [normalize_answer(o) in {normalize_answer(x) for x in refs} for o, refs in results.values()]
        return {"accuracy": 100.0 * sum(hits) / len(hits)}
