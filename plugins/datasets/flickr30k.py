"""``flickr30k``: Flickr30K retrieval on Karpathy's splits (29K train, 1K val, 1K test: the paper's zero-shot
retrieval test, Table 5).

Layout under ``root``::

    <root>/flickr30k-images/*.jpg        (https://shannon.cs.illinois.edu/DenotationGraph/)
    <root>/dataset_flickr30k.json        Karpathy's split file
"""
from __future__ import annotations

from typing import List, Literal, Optional

from framework.core.registry import DATASETS
from framework.data.builder import DataFile, ProcessorSpecs
from plugins.datasets.coco_karpathy import KarpathyBuilder


@DATASETS.register("flickr30k")
class Flickr30K(KarpathyBuilder):
    """Args:
        root: the Flickr30K folder (layout: this module's docstring).
        annotations: ``retrieval`` (the paper's use) or ``caption``.
        split_file: the split file's name under ``root`` (default: dataset_flickr30k.json).
    """

    split_file = "dataset_flickr30k.json"
    how_to_get = ("Flickr30K images: https://shannon.cs.illinois.edu/DenotationGraph/ (by request); Karpathy's "
                  "split file dataset_flickr30k.json: https://cs.stanford.edu/people/karpathy/deepimagesent/")

    def __init__(self, entry: str, *, root: str, annotations: Literal["caption", "retrieval"] = "retrieval",
                 split_file: Optional[str] = None, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, root=root, annotations=annotations, split_file=split_file, processors=processors)
        self.root = self.root / "flickr30k-images"  # Karpathy's file names have no folder
        self.file = self.root.parent / (split_file or self.split_file)

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(self.file, "Karpathy split file"), DataFile(self.root, "flickr30k-images folder")]
