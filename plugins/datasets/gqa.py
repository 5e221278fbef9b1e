"""``gqa``: GQA balanced questions (the paper's zero-shot GQA on test-dev, Table 2), one answer each (score
with ``task.metric: exact``).

Layout under ``root``::

    <root>/images/<imageId>.jpg                        (https://cs.stanford.edu/people/dorarad/gqa/download.html)
    <root>/questions/<split>_balanced_questions.json   e.g. testdev_balanced_questions.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import VQADataset

SUBSETS = {"train": "train", "val": "val", "test-dev": "testdev", "test": "test"}


@DATASETS.register("gqa")
class GQA(DatasetBuilder):
    """Args:
        root: the GQA folder (layout: this module's docstring). Splits: train, val, test-dev, test.
    """

    how_to_get = "GQA images and balanced questions: https://cs.stanford.edu/people/dorarad/gqa/download.html"

    def __init__(self, entry: str, *, root: str, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root = Path(root).expanduser()

    def _file(self, split: str) -> Path:
        if split not in SUBSETS:
            raise ConfigError(f"dataset entry {self.entry!r}: no split {split!r}; it has {', '.join(SUBSETS)}")
        return self.root / "questions" / f"{SUBSETS[split]}_balanced_questions.json"

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(self._file(s), f"{s} balanced questions") for s in dict.fromkeys(splits)] + [
            DataFile(self.root / "images", "images")]

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        raw = json.loads(self._file(split).read_text())  # {question id: {imageId, question, answer, ...}}
        # GQA's question ids are strings; the VQA result format wants integers, so they are numbered in order
        ids = {qid: i for i, qid in enumerate(raw)}
        questions = [{"question_id": ids[q], "image_id": r["imageId"], "question": r["question"]}
                     for q, r in raw.items()]
        answers = [{"question_id": ids[q], "answers": [{"answer": r["answer"]}], "answer_type": ""}
                   for q, r in raw.items() if "answer" in r]
        return VQADataset({"questions": questions}, {"annotations": answers} if answers else None,
                          self.root / "images", lambda image_id: f"{image_id}.jpg", proc["image"], proc["text"])
