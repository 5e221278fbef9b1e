"""``vqav2``: VQAv2 on COCO images, the official question and annotation files (the paper's Table 2 zero-shot
VQA on val, Table 4 fine-tuned on test-dev).

Layout under ``root``::

    <root>/train2014/ val2014/ test2015/                         COCO images (https://cocodataset.org)
    <root>/v2_OpenEnded_mscoco_<split>_questions.json            (https://visualqa.org/download.html)
    <root>/v2_mscoco_<split>_annotations.json                    (not for test splits)

Split names map to the official subsets: train -> train2014, val -> val2014, test-dev -> test-dev2015,
test -> test2015.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import VQADataset


class CocoVQABuilder(DatasetBuilder):
    """Questions on COCO images in the VQAv2 file format; subclasses name their files."""

    subsets: Dict[str, str] = {}  # split -> official subset name
    questions = ""  # file name patterns with {subset}
    answers = ""

    def __init__(self, entry: str, *, root: str, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root = Path(root).expanduser()

    def _subset(self, split: str) -> str:
        if split not in self.subsets:
            raise ConfigError(f"dataset entry {self.entry!r}: no split {split!r}; it has {', '.join(self.subsets)}")
        return self.subsets[split]

    def _answer_file(self, split: str) -> Optional[Path]:
        subset = self._subset(split)
        return None if subset.startswith("test") else self.root / self.answers.format(subset=subset)

    def data_files(self, splits: List[str]) -> List[DataFile]:
        files = []
        for s in dict.fromkeys(splits):
            files.append(DataFile(self.root / self.questions.format(subset=self._subset(s)), f"{s} questions"))
            if self._answer_file(s) is not None:
                files.append(DataFile(self._answer_file(s), f"{s} annotations"))
        return files + [DataFile(self.root, "COCO image folders")]

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        subset = self._subset(split)
        folder = "test2015" if subset.startswith("test") else subset
        return VQADataset(self.root / self.questions.format(subset=subset), self._answer_file(split), self.root,
                          lambda image_id: f"{folder}/COCO_{folder}_{image_id:012d}.jpg", proc["image"], proc["text"])


@DATASETS.register("vqav2")
class VQAv2(CocoVQABuilder):
    """Args:
        root: the folder holding the COCO images and the VQAv2 files (layout: this module's docstring).
    """

    how_to_get = "VQAv2 questions and annotations: https://visualqa.org/download.html; COCO images: cocodataset.org"
    subsets = {"train": "train2014", "val": "val2014", "test-dev": "test-dev2015", "test": "test2015"}
    questions = "v2_OpenEnded_mscoco_{subset}_questions.json"
    answers = "v2_mscoco_{subset}_annotations.json"
