"""The contracts between parts: what a task asks of a model, a model of its image encoder, an evaluation of a
retrieval split, the feature cache of an encoder and a data set. Each is a runtime-checkable ``Protocol``:
checked with ``isinstance`` where a part is built or used (:func:`missing`), so a plugin that lacks a member is
named with the member, not met by an ``AttributeError`` deep in a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch


@runtime_checkable
class ImageEncoderPart(Protocol):
    """A registered image encoder: ``forward(images [B, 3, H, W]) -> tokens [B, N, num_features]``.

    ``frozen``: its weights never change (no gradients, kept in eval mode, left out of our checkpoints: they
    come from their own file when the model is built), as BLIP-2's encoders are. A frozen encoder may store its
    weights and return its tokens in a lower precision (fp16, bf16); whoever reads the tokens casts them (the
    BLIP-2 models' ``ln_vision`` computes in fp32)."""

    num_features: int
    frozen: bool

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ShardsByLayer(Protocol):
    """A part whose repeated layers FSDP shards one unit each (``run.strategy: fsdp``,
    :mod:`framework.engine.fsdp`): ``fsdp_layers()``, each gathered only around its own ``forward`` (and the methods
    a layer names in its ``fsdp_forward_methods``), so a layer must use its weights nowhere else.
    ``recompute_layers``: their activations are recomputed in backward under ``run.fsdp.activation_checkpointing``
    (the LLM's, the largest of stage 2)."""

    recompute_layers: bool

    def fsdp_layers(self) -> List[torch.nn.Module]: ...


@runtime_checkable
class DeclaresProcessing(Protocol):
    """An image encoder that knows how its input images are prepared for evaluation: the processor specs (registered
    processors and their arguments) a model loaded without any data set config uses (``framework.load``)."""

    def eval_processing(self) -> List[Dict[str, Any]]: ...


@runtime_checkable
class RemovesParts(Protocol):
    """A model that deletes parts of what it builds (stage 2 deletes the Q-Former's text path): ``removed``, the
    parameter-name prefixes it deleted. Its checkpoints record them (``absent``), so a model that has those parts
    (stage 2 with ``qformer_text_input``) may load the checkpoint and keep its own weights for them."""

    removed: Tuple[str, ...]


@runtime_checkable
class CachesFeatures(Protocol):
    """An image encoder whose output tokens ``python -m framework.cache_features`` can store and a run can read
    instead of running it (``cached``: it reads them now). ``fingerprint`` is what the tokens depend on (weights,
    architecture, precision, the split's image processing): a cache made under another is refused."""

    cached: bool
    cache_dir: Path

    def fingerprint(self, image_processors: Any) -> Dict[str, Any]: ...


@runtime_checkable
class ReadsFeatureCache(Protocol):
    """A data set that can serve an image's cached tokens in place of its pixels: ``feature_cache`` (None: read
    the image file) and ``image(file_name)``, what a sample's ``image`` is."""

    feature_cache: Any

    def image(self, file_name: str) -> Any: ...


@runtime_checkable
class RetrievalSplit(Protocol):
    """A retrieval evaluation split: its samples are the images (``index`` i); the texts are listed apart, with
    the positives both ways (``img2txt[i]``: the texts of image i; ``txt2img[t]``: the image of text t)."""

    texts: List[str]
    img2txt: List[List[int]]
    txt2img: List[int]


@runtime_checkable
class Generative(Protocol):
    """Text from images: a caption, an answer (``prompts``: the text after the visual prompt, one per image)."""

    def generate(self, images: torch.Tensor, prompts: Optional[List[str]] = None, **decoding: Any) -> List[str]: ...


@runtime_checkable
class RanksAnswers(Protocol):
    """Answers chosen among candidates by their likelihood after the visual prompt and a prompt (closed-vocabulary
    or multiple-choice VQA; LAVIS's InstructBLIP ``predict_class``)."""

    def rank_answers(self, images: torch.Tensor, prompts: List[str], candidates: Sequence[Any],
                     n_segments: int = 1) -> List[List[int]]:
        """Per image, candidate indices from the most to the least likely: ``candidates`` one list for all the
        images, or one per image."""


@runtime_checkable
class Retrievable(Protocol):
    """Image-text retrieval by similarity of separately computed features (ITC)."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, ...] features of each image."""

    def text_features(self, texts: List[str]) -> torch.Tensor:
        """[B, ...] features of each text."""

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """[I, T] similarity of every image with every text."""


@runtime_checkable
class Matchable(Protocol):
    """Image-text matching of a pair seen together (ITM), to re-rank what the similarities retrieved."""

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, N, D] what matching reads of each image; kept for a whole split during re-ranking."""

    def match_scores(self, image_tokens: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """[B] score of each (image i, text i) pair, on a scale where adding the ITC similarity makes sense.
        ``image_tokens`` of batch 1: that image against each of the B texts (re-ranking groups pairs by image)."""


@runtime_checkable
class HasExampleBatch(Protocol):
    """A model that says what its training batch holds: the dry run's cost estimate (:mod:`framework.engine.cost`) runs
    one training step on it, so the framework names no batch key itself."""

    def example_batch(self, batch_size: int, text_tokens: int) -> Dict[str, Any]:
        """A batch as the collate function gives it, of ``batch_size`` samples with texts of ``text_tokens`` tokens:
        the tensors of the right shapes (values unimportant), the strings as lists. Called under the estimate's
        fake-tensor mode, so tensors made here cost nothing."""


def missing(obj: Any, contract: type) -> List[str]:
    """The members of ``contract`` that ``obj`` lacks (empty: it fulfils it)."""
    if isinstance(obj, contract):
        return []
    members = [m for m in vars(contract) if not m.startswith("_")] + list(getattr(contract, "__annotations__", {}))
    return sorted({m for m in members if not hasattr(obj, m)} or {"(a member of another type)"})


def require(obj: Any, contract: type, who: str, hint: str = "") -> None:
    """Raise :class:`framework.core.errors.ConfigError` naming what ``obj`` lacks of ``contract``, which ``who`` (a
    task, a command) needs."""
    lacks = missing(obj, contract)
    if lacks:
        from framework.core.errors import ConfigError

        raise ConfigError(f"{who} needs a model with {', '.join(m + '()' for m in lacks)}"
                          f"{f' ({hint})' if hint else ''}; {type(obj).__name__} has none")
