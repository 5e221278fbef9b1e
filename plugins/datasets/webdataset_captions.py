"""``webdataset``: image-caption pairs in webdataset tar shards, the form of the paper's web-scale pretraining
data (CC3M, CC12M, SBU, LAION-115M with CapFilt captions) as img2dataset writes it.

Each shard ``<name>.tar`` holds per sample ``<key>.jpg`` (or png / webp), ``<key>.txt`` (the caption) and
optionally ``<key>.json`` (``image_id``; ``captions``: several captions, one drawn per sample and pass).
``python -m framework.make_shards`` writes such shards from any caption data set (shapes included).

The training split streams (``framework/data/shards.py``): shards split across ranks and dataloader workers,
shuffled per pass, a shuffle buffer within each shard, decoding and processors in the workers, corrupt samples
and unreadable shards skipped and counted, the position resumable from a checkpoint. Other splits (a small
validation set) are read into memory and evaluated like a retrieval split.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError, MissingDataError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, Pipeline, ProcessorSpecs
from framework.data.shards import (
    ShardSamples,
    ShardStream,
    captions_of,
    expand,
    image_id_of,
    meta_of,
    open_image,
    seeded,
)


@DATASETS.register("webdataset")
class WebDatasetBuilder(DatasetBuilder):
    """Args:
        shards: split -> shard URLs: a brace pattern (``data/cc3m/{00000..00331}.tar``), several joined by
            ``::``, or a list; local paths, http(s) or ``pipe:<command>`` (webdataset's gopen). A split without
            shards is not evaluated for this entry.
        samples_per_epoch: samples in the training shards (or the nominal epoch for the run's iteration
            count and the lr schedule's epochs); required, as a stream cannot be counted up front.
        shuffle_buffer: samples shuffled together within a shard (0: in stored order).
        seed: shard order per pass, the shuffle buffer and the caption drawn.
        how_to_get: where the shards come from, shown when one is missing.
    """

    def __init__(self, entry: str, *, shards: Dict[str, Any], samples_per_epoch: Optional[int] = None,
                 shuffle_buffer: int = 1000, seed: int = 0,
                 how_to_get: str = "write shards with img2dataset (https://github.com/rom1504/img2dataset) or "
                                   "python -m framework.make_shards",
                 processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.shards = {split: expand(urls) for split, urls in shards.items()}
        self.samples_per_epoch, self.shuffle_buffer, self.seed = samples_per_epoch, shuffle_buffer, seed
        self.how_to_get = how_to_get

    def has_split(self, split: str) -> bool:
        return split in self.shards

    def _local(self, split: str) -> List[Path]:
        urls = self.shards.get(split, [])
        return [Path(u).expanduser() for u in urls if "://" not in u and not u.startswith("pipe:")]

    def data_files(self, splits: List[str]) -> List[DataFile]:
        """One line per split (a web-scale set has thousands of shards): the folder of its local shards."""
        out = []
        for split in splits:
            local = self._local(split)
            if local:
                out.append(DataFile(local[0].parent, f"{split} shards ({len(local)} files, {local[0].name} .. "
                                                     f"{local[-1].name})"))
        return out

    def prepare(self, splits: List[str]) -> None:
        for split in splits:
            missing = [p for p in self._local(split) if not p.is_file()]
            if missing:
                raise MissingDataError(
                    f"dataset entry {self.entry!r} (datasets.{self.entry}, datasets_cfg/{self.entry}.yaml): "
                    f"{len(missing)} of {len(self.shards[split])} {split} shards are missing, e.g. "
                    f"{', '.join(map(str, missing[:3]))}\n{self.how_to_get}")

    def _decoder(self, split: str) -> "CaptionDecoder":
        proc = self.processors(split)
        return CaptionDecoder(proc["image"], proc["text"])

    def build(self, split: str) -> Dataset:
        urls = self.shards[split]
        if split != "train":
            decode = self._decoder(split)
            return ShardSamples(urls, decode, lambda raw: [decode.text(c) for c in captions_of(raw, meta_of(raw))])
        if not self.samples_per_epoch:
            raise ConfigError(f"datasets.{self.entry}.samples_per_epoch is not set: a stream of shards cannot be "
                              f"counted up front; give the number of training samples (or the epoch you want)")
        return ShardStream(urls, self._decoder(split), self.samples_per_epoch, self.seed, self.shuffle_buffer,
                           name=f"datasets.{self.entry}")


class CaptionDecoder:
    """Raw shard sample -> ``{image, text_input, image_id, key}``: one of its captions drawn with ``rng``, the
    processors run under a torch RNG seeded from it. Picklable, for dataloader workers started with spawn."""

    def __init__(self, image_proc: Optional[Pipeline], text_proc: Optional[Pipeline]) -> None:
        self.image_proc, self.text_proc = image_proc, text_proc

    def text(self, caption: str) -> str:
        return self.text_proc(caption) if self.text_proc else caption

    def __call__(self, raw: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
        meta = meta_of(raw)
        caption = rng.choice(captions_of(raw, meta))
        image = open_image(raw)
        return {"image": seeded(self.image_proc, image, rng) if self.image_proc else image,
                "text_input": self.text(caption), "image_id": image_id_of(meta, raw["__key__"]), "key": raw["__key__"]}
