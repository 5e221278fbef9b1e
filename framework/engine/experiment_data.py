"""An experiment's data: a builder per ``datasets:`` entry checked before any model is built, then the data
sets per split (reading the frozen-feature caches a model part asks for) and the loaders."""
from __future__ import annotations

from typing import Any, Dict, List

from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from framework.core import dist, resources
from framework.core.errors import ConfigError
from framework.core.registry import DATASETS, build
from framework.data.builder import DatasetBuilder
from framework.data.feature_cache import cache_folder, open_cache, random_processors
from framework.data.loader import (
    IterableMixture,
    Mixture,
    eval_loader,
    is_stream,
    stream_loader,
    train_loader,
)
from framework.engine.experiment import ExperimentConfig, RunConfig
from framework.models.interfaces import CachesFeatures, ReadsFeatureCache


def builders(exp: ExperimentConfig) -> Dict[str, DatasetBuilder]:
    out = {}
    for entry, spec in exp.datasets.items():
        args = {k: v for k, v in spec.items() if k not in ("builder", *DATASETS.reserved)}
        out[entry] = build("dataset", {"name": spec["builder"], **args}, entry=entry)
    return out


def prepare_data(exp: ExperimentConfig) -> Dict[str, DatasetBuilder]:
    """A builder per ``datasets:`` entry, its files checked (or generated) for the run's splits: done before any
    model is built, so missing data fails in seconds, not after loading an LLM."""
    if not exp.datasets:
        raise ConfigError(f"datasets: no data set is named; add an entry named after a file of "
                          f"{resources.root() / 'datasets_cfg'} (datasets: {{NAME: {{}}}}) or your own "
                          f"(docs/recipes/)")
    found = builders(exp)
    # an entry may lack a split (a second instruction set that only trains), but a split no entry has would
    # silently train or evaluate on nothing
    for key in ("train_splits", "eval_splits", "test_splits"):
        lacking = [s for s in getattr(exp.run, key) if not any(b.has_split(s) for b in found.values())]
        if lacking:
            raise ConfigError(f"run.{key}: no datasets entry has the split(s) {lacking} (entries: {sorted(found)}); "
                              f"give an entry a file for it, or remove it from run.{key}")
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
