"""``coco_karpathy``: COCO captions and COCO retrieval on Karpathy's splits (113K train incl. restval, 5K val,
5K test), as the BLIP-2 paper reports them (Table 3 captioning, Table 5 retrieval on the 5K test).

Layout under ``root`` (the official files, unchanged)::

    <root>/train2014/COCO_train2014_*.jpg  <root>/val2014/COCO_val2014_*.jpg     (https://cocodataset.org)
    <root>/dataset_coco.json            Karpathy's split file (https://cs.stanford.edu/people/karpathy/deepimagesent/)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Literal, Optional

from torch.utils.data import Dataset

from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import CocoCaptionDataset, RetrievalDataset, karpathy


class KarpathyBuilder(DatasetBuilder):
    """Karpathy-split caption / retrieval data: ``split_file`` names its split file under ``root``."""

    split_file = "dataset_coco.json"

    def __init__(self, entry: str, *, root: str, annotations: Literal["caption", "retrieval"],
                 split_file: Optional[str] = None, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root, self.annotations = Path(root).expanduser(), annotations
        self.file = self.root / (split_file or self.split_file)

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(self.file, "Karpathy split file (captions of every split)"),
                DataFile(self.root, "image folder")]

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        captions, retrieval = karpathy(json.loads(self.file.read_text()), split)
        if self.annotations == "caption":
            return CocoCaptionDataset(captions, self.root, split == "train", proc["image"], proc["text"])
        return RetrievalDataset(retrieval, self.root, split == "train", proc["image"], proc["text"])


@DATASETS.register("coco_karpathy")
class CocoKarpathy(KarpathyBuilder):
    """Args:
        root: the COCO folder (layout: this module's docstring).
        annotations: ``caption`` (COCO caption samples) or ``retrieval`` (image-text retrieval samples).
        split_file: the split file's name under ``root`` (default: dataset_coco.json).
    """

    how_to_get = ("COCO images: https://cocodataset.org/#download (train2014, val2014); Karpathy's split file "
                  "dataset_coco.json: https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip")
