"""The dataset-builder contract: a ``datasets_cfg`` entry -> split -> torch Dataset.

A builder is registered in ``DATASETS`` and constructed with its ``datasets_cfg/<entry>.yaml`` values
(merged with the experiment's ``datasets.<entry>`` overrides) as keyword arguments, plus ``entry``, the name
of that ``datasets_cfg`` entry, so errors can point at it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import MissingDataError
from framework.core.registry import build
from framework.core.schema import Part

# ``processors:`` of a dataset entry: {train|eval: {image|text: [processor specs]}}
ProcessorSpecs = Dict[str, Dict[str, List[Part("processor")]]]


@dataclass
class DataFile:
    path: Path
    role: str  # what the file is, e.g. "train annotations"
    generated: bool = False  # the builder writes it itself when missing


Pipeline = Callable[[object], object]


class Chain:
    """Registered processors applied one after another (a class, not a closure: dataloader workers started
    with ``spawn`` receive it pickled)."""

    def __init__(self, steps: List[Callable[[object], object]]) -> None:
        self.steps = steps

    def __call__(self, x: object) -> object:
        for step in self.steps:
            x = step(x)
        return x


def compose(specs: List[Dict]) -> Optional[Pipeline]:
    """Chain registered processors ``[{name: resize, size: 224}, {name: normalize}]`` into one callable."""
    steps = [build("processor", s) for s in specs]
    return Chain(steps) if steps else None


class DatasetBuilder:
    """Base class. Subclasses list their files, optionally prepare them, and build a split. Their arguments
    are keyword-only (after ``*``) and are the keys of their ``datasets_cfg`` entries.

    ``processors`` maps ``train`` (the training split) and ``eval`` (every other split) to
    ``{image: [processor specs], text: [processor specs]}``.
    """

    how_to_get: str = "see the dataset's datasets_cfg entry for where the files come from"

    def __init__(self, entry: str, *, processors: Optional[ProcessorSpecs] = None) -> None:
        self.entry = entry
        self.processor_specs = processors or {}

    def image_processor_specs(self, split: str) -> List[Dict]:
        return self.processor_specs.get("train" if split == "train" else "eval", {}).get("image", [])

    def processors(self, split: str) -> Dict[str, Optional[Pipeline]]:
        key = "train" if split == "train" else "eval"
        specs = self.processor_specs.get(key, {})
        return {kind: compose(specs.get(kind, [])) for kind in ("image", "text")}

    def has_split(self, split: str) -> bool:
        """Whether this entry has ``split`` at all (a shard set may have no validation shards): a run evaluates
        an eval split on the entries that have it."""
        return True

    def data_files(self, splits: List[str]) -> List[DataFile]:
        """Every file building ``splits`` reads (listed by ``--dry-run``, checked before training)."""
        raise NotImplementedError

    def prepare(self, splits: List[str]) -> None:
        """Make the files available or fail naming each missing one. Generating builders override this."""
        missing = [f for f in self.data_files(splits) if not f.generated and not f.path.exists()]
        if missing:
            lines = "\n  ".join(f"{f.role}: {f.path}" for f in missing)
            raise MissingDataError(f"dataset entry {self.entry!r} (datasets.{self.entry}, datasets_cfg/{self.entry}.yaml) is missing "
                                   f"{len(missing)} file(s):\n  {lines}\n{self.how_to_get}")

    def build(self, split: str) -> Dataset:
        raise NotImplementedError
