"""``framework.load``: a trained, converted or prepared model in three lines of Python::

    from framework import load
    model, preprocess = load("output/stage2_opt2.7b")        # a run folder, a config, or a converted folder
    print(model.caption([preprocess("cat.jpg")]))

``load`` takes a **run folder** (its ``config.yaml``, weights from ``checkpoints/best.pt``, else ``last.pt``), a
**converted or prepared folder** (its ``model.yaml``, as ``python -m framework.convert`` writes it), or a **config
file** (an experiment, or a ``model:``-only file). ``preprocess`` turns an image (a path, a PIL image) into the
tensor the model reads: the config's first data set's evaluation processing, or, with no data set, the image
encoder's own (its ``eval_processing``). A model with no trained weights is refused unless
``allow_random_weights``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch import nn

from framework.core import checkpoint
from framework.core.errors import ConfigError
from framework.data.builder import compose
from framework.data.images import load_image
from framework.models.build import build_model
from framework.models.interfaces import (
    DeclaresProcessing,
    Generative,
    RanksAnswers,
    Retrievable,
    require,
)

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


class Model:
    """A loaded model with what one does with BLIP-2 (caption, ask, rank_answers; rank, embed). ``images``:
    preprocessed tensors ([3, H, W] each, or one [B, 3, H, W] batch), or paths / PIL images (preprocessed here).
    ``module``: the ``nn.Module``."""

    def __init__(self, module: nn.Module, preprocess: Callable[[ImageLike], torch.Tensor],
                 device: torch.device) -> None:
        self.module, self.preprocess, self.device = module, preprocess, device
        # what preprocess makes of any image: the one input shape the model was built for
        self.input_shape = tuple(preprocess(Image.new("RGB", (8, 8))).shape)

    def _batch(self, images: Union[Sequence[ImageLike], torch.Tensor]) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            tensors = list(images if images.dim() == 4 else images[None])
        else:
            tensors = [im if isinstance(im, torch.Tensor) else self.preprocess(im) for im in images]
        wrong = {tuple(t.shape) for t in tensors} - {self.input_shape}
        if wrong:
            raise ConfigError(f"images of shape {sorted(wrong)[0]}, but the model reads {self.input_shape}: give "
                              f"paths or PIL images, or tensors made by the preprocess load() returned")
        return torch.stack(tensors).to(self.device)

    def _need(self, contract: type, what: str) -> None:
        require(self.module, contract, what, "a stage-2 model captions and answers, a stage-1 model ranks and embeds")

    @torch.no_grad()
    def caption(self, images: Union[Sequence[ImageLike], torch.Tensor], prompt: Optional[str] = None,
                **decoding: Any) -> List[str]:
        """A caption per image after ``prompt`` (default: the model's); decoding as the captioning task's keys
        (default: beam 5, up to 30 tokens)."""
        self._need(Generative, "caption")
        batch = self._batch(images)
        prompts = None if prompt is None else [prompt] * len(batch)
        return self.module.generate(batch, prompts, **({"num_beams": 5, "max_new_tokens": 30} | decoding))

    @torch.no_grad()
    def ask(self, images: Union[Sequence[ImageLike], torch.Tensor], questions: Sequence[str],
            template: str = "Question: {} Answer:", **decoding: Any) -> List[str]:
        """An answer per (image, question); decoding as the VQA task's keys (default: beam 5, up to 10 tokens)."""
        self._need(Generative, "ask")
        batch = self._batch(images)
        if len(questions) != len(batch):
            raise ConfigError(f"ask: {len(batch)} images but {len(questions)} questions; give one question per image")
        return self.module.generate(batch, [template.format(q) for q in questions],
                                    **({"num_beams": 5, "max_new_tokens": 10} | decoding))

    @torch.no_grad()
    def rank_answers(self, images: Union[Sequence[ImageLike], torch.Tensor], questions: Sequence[str],
                     candidates: Sequence[Any], template: str = "Question: {} Answer:",
                     n_segments: int = 1) -> List[List[str]]:
        """Per (image, question), the ``candidates`` from the most to the least likely answer (closed-vocabulary
        or multiple-choice VQA): one list of candidates for every question, or a list per question."""
        self._need(RanksAnswers, "rank_answers")
        batch = self._batch(images)
        if len(questions) != len(batch):
            raise ConfigError(f"rank_answers: {len(batch)} images but {len(questions)} questions; give one question "
                              f"per image")
        per_image = bool(candidates) and not isinstance(candidates[0], str)
        if per_image and len(candidates) != len(batch):
            raise ConfigError(f"rank_answers: {len(batch)} images but {len(candidates)} candidate lists; give one "
                              f"list for all, or one per image")
        order = self.module.rank_answers(batch, [template.format(q) for q in questions], candidates, n_segments)
        return [[(candidates[i] if per_image else candidates)[j] for j in row] for i, row in enumerate(order)]

    @torch.no_grad()
    def rank(self, images: Union[Sequence[ImageLike], torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
        """[images, texts] similarities (ITC); sort a row for the texts of an image, a column for the images of a
        text."""
        self._need(Retrievable, "rank")
        m = self.module
        return m.similarity(m.image_features(self._batch(images)), m.text_features(list(texts))).float().cpu()

    @torch.no_grad()
    def embed(self, images: Optional[Union[Sequence[ImageLike], torch.Tensor]] = None,
              texts: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Features for an index: ``images`` ([N, ...], a stage-1 model's query embeddings) and ``texts``."""
        self._need(Retrievable, "embed")
        out = {}
        if images is not None:
            out["images"] = self.module.image_features(self._batch(images)).float().cpu()
        if texts is not None:
            out["texts"] = self.module.text_features(list(texts)).float().cpu()
        return out


def _resolve(source: Path, options: Sequence[str]) -> Tuple[Dict[str, Any], Optional[Callable], int]:
    """(model section, the data set's evaluation processing or None, the run's seed) of a run folder, folder or
    config file, with the ``--options`` overrides applied."""
    from framework.core.config import load_config
    from framework.engine.experiment import load_experiment, load_model_file
    from framework.engine.experiment_data import builders

    if source.is_dir():
        if (source / "config.yaml").is_file():  # a run folder
            exp = load_experiment(str(source / "config.yaml"), options)
            spec = dict(exp.model)
            weights = checkpoint.run_weights(source)
            if not spec.get("checkpoint") and weights is not None:
                spec["checkpoint"] = str(weights)
            entries = builders(exp)
            return spec, next(iter(entries.values())).processors("eval")["image"] if entries else None, exp.run.seed
        if (source / "model.yaml").is_file():  # converted / prepared
            return dict(load_model_file(source / "model.yaml", options)), None, 0
        raise ConfigError(f"{source}: neither a run folder (config.yaml) nor a converted model (model.yaml)")
    if not source.is_file():
        raise ConfigError(f"{source}: no such file or folder (a run folder, a converted folder or a config)")
    raw, _ = load_config(source)
    if "task" not in raw:  # a model-only file (a converter's model.yaml, a _base_)
        return dict(load_model_file(source, options)), None, 0
    exp = load_experiment(str(source), options)
    entries = builders(exp)
    return dict(exp.model), next(iter(entries.values())).processors("eval")["image"] if entries else None, exp.run.seed


def load(source: Union[str, Path], device: Optional[str] = None, allow_random_weights: bool = False,
         options: Sequence[str] = ()) -> Tuple[Model, Callable[[ImageLike], torch.Tensor]]:
    """(the model, ``preprocess``): see this module's docstring. ``device``: default CUDA when there is one;
    ``options``: config overrides (``KEY=VALUE``, as on the command line)."""
    spec, processing, seed = _resolve(Path(source).expanduser(), options)
    if not spec.get("checkpoint") and not allow_random_weights:
        raise ConfigError(f"{source}: no trained weights (no model.checkpoint, no checkpoints/ in a run folder); "
                          f"point it at trained or converted weights, or pass allow_random_weights=True")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        # seeded as the run was built: parts with no weights file of their own (a test's random frozen encoder)
        # are rebuilt as the run had them
        torch.manual_seed(seed)
        module = build_model(spec).eval().to(dev)
    if processing is None:
        encoders = [m for m in module.modules() if isinstance(m, DeclaresProcessing)]
        if not encoders:
            raise ConfigError(f"{source}: its image encoder declares no evaluation processing and the config has no "
                              f"data set to take it from; load an experiment config with a data set")
        processing = compose(encoders[0].eval_processing())

    def preprocess(image: ImageLike) -> torch.Tensor:
        """An image (a path or a PIL image) as the model's input tensor [3, H, W]."""
        return processing(load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB"))

    return Model(module, preprocess, dev), preprocess
