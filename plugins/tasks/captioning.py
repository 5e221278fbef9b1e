"""``captioning``: generate a caption per image; BLEU-1..4, METEOR, ROUGE-L and CIDEr with pycocoevalcap.

SPICE is not computed: it needs Stanford CoreNLP models that pycocoevalcap downloads on first use, and this
framework downloads nothing at run time; it is reported as unavailable (with that reason), never as a number.
Predictions are written in the official result format (``[{"image_id", "caption"}]``) to
``<output_dir>/predictions/<entry>_<split>_iter<N>.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.core.logs import logger
from framework.core.registry import TASKS
from framework.engine.task import Task
from framework.models.interfaces import Generative

SPICE_UNAVAILABLE = ("SPICE unavailable: it needs Stanford CoreNLP models that pycocoevalcap downloads on first "
                     "use, and nothing is downloaded at run time")


def caption_metrics(references: Dict[int, List[str]], predictions: Dict[int, str]) -> Dict[str, float]:
    """COCO caption metrics (the official tokenisation, then BLEU-1..4, METEOR, ROUGE-L, CIDEr), in percent."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tok.tokenize({i: [{"caption": predictions[i]}] for i in references})
    out: Dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu{n + 1}": 100.0 * b for n, b in enumerate(bleu)})
    for name, scorer in (("meteor", Meteor()), ("rouge_l", Rouge()), ("cider", Cider())):
        out[name] = 100.0 * scorer.compute_score(gts, res)[0]
    return out


@TASKS.register("captioning")
class Captioning(Task):
    """Trains with the model's LM loss; evaluates ``model.generate(images, prompts, **decoding)``.

    Args:
        prompt: text after the visual prompt, in training and generation (the paper fine-tunes and evaluates
            with "a photo of"; its stage-2 pretraining uses none: "").
        num_beams, max_new_tokens, length_penalty, repetition_penalty: decoding (the paper: beam 5, up to 30
            tokens).
        min_length: the shortest caption, as LAVIS's ``min_len`` counts it: with the prompt's tokens for OPT (8
            with "a photo of": at least 4 new tokens), with the decoder's start token for FlanT5 (at least 7).
        min_new_tokens: when set, the shortest caption in generated tokens, replacing ``min_length``.
    """

    best_metric = "cider"
    best_mode = "max"

    def __init__(self, prompt: str = "a photo of", num_beams: int = 5, max_new_tokens: int = 30, min_length: int = 8,
                 min_new_tokens: Optional[int] = None, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.0) -> None:
        self.prompt = prompt
        self.decoding = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, min_length=min_length,
                             min_new_tokens=min_new_tokens, length_penalty=length_penalty,
                             repetition_penalty=repetition_penalty)

    def train_step(self, model: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        """The LM loss of each caption after [visual prompt, ``prompt``] (the prompt is not in the loss)."""
        return model({**batch, "prompt": [self.prompt] * len(batch["image"])})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        self.require(model, Generative, "a generative model such as blip2_generative")
        device = next(model.parameters()).device
        local_preds, local_refs, local_domains = {}, {}, {}
        for batch in loader:
            texts = model.generate(batch["image"].to(device), [self.prompt] * len(batch["image"]), **self.decoding)
            ids = batch["image_id"].tolist()
            local_preds.update(zip(ids, texts))
            local_refs.update(zip(ids, batch["captions"]))
            local_domains.update(zip(ids, batch.get("domain") or [""] * len(ids)))
        preds, refs, domains = (dist.gather_dict(d) for d in (local_preds, local_refs, local_domains))
        self.save_predictions([{"image_id": i, "caption": c} for i, c in sorted(preds.items())], predictions)
        metrics = caption_metrics(refs, preds)
        for domain in sorted({d for d in domains.values() if d}):  # NoCaps: in-, near-, out-domain CIDEr
            mine = {i: r for i, r in refs.items() if domains[i] == domain}
            metrics[f"cider_{domain}"] = caption_metrics(mine, {i: preds[i] for i in mine})["cider"]
        logger.info(SPICE_UNAVAILABLE)
        return metrics
