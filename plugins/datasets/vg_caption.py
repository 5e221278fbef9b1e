"""``vg_caption``: Visual Genome region descriptions as image captions (part of the paper's pretraining mix:
each region's phrase is a caption of the whole image, as BLIP and LAVIS use them).

Layout under ``root``::

    <root>/VG_100K/*.jpg  <root>/VG_100K_2/*.jpg         (https://homes.cs.washington.edu/~ranjay/visualgenome/)
    <root>/image_data.json                               which folder each image is in (its url)
    <root>/region_descriptions.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import CocoCaptionDataset


def image_files(root: Path) -> Dict[int, str]:
    """Visual Genome image id -> file below ``root``: the folder is the second-to-last part of the image's url
    in ``image_data.json`` (.../VG_100K_2/1.jpg)."""
    return {im["image_id"]: "/".join(im["url"].split("/")[-2:])
            for im in json.loads((root / "image_data.json").read_text())}


class VisualGenomeBuilder(DatasetBuilder):
    """What the Visual Genome builders share: the folder, one split (``train``), the image list and one annotation
    file (``annotations``: its name and what it holds)."""

    how_to_get = "Visual Genome v1.2 images, image_data.json and the annotation file: " \
                 "https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"
    annotations = ("", "")

    def __init__(self, entry: str, *, root: str, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root = Path(root).expanduser()

    def has_split(self, split: str) -> bool:
        return split == "train"

    def data_files(self, splits: List[str]) -> List[DataFile]:
        if "train" not in splits:
            raise ConfigError(f"dataset entry {self.entry!r}: Visual Genome has one split, train (asked for "
                              f"{splits}); evaluate on another entry")
        name, role = self.annotations
        return [DataFile(self.root / "image_data.json", "image list"), DataFile(self.root / name, role),
                DataFile(self.root, "VG_100K / VG_100K_2 image folders")]


@DATASETS.register("vg_caption")
class VGCaption(VisualGenomeBuilder):
    """Args:
        root: the Visual Genome folder (layout: this module's docstring). One split, ``train``.
        max_per_image: region phrases kept per image (the first ones; null: all, about 50 per image).
    """

    annotations = ("region_descriptions.json", "region descriptions")

    def __init__(self, entry: str, *, root: str, max_per_image: Optional[int] = None,
                 processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, root=root, processors=processors)
        self.max_per_image = max_per_image

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        files = image_files(self.root)
        images, anns = [], []
        for entry in json.loads((self.root / "region_descriptions.json").read_text()):
            regions = entry["regions"][: self.max_per_image]
            if not regions:
                continue
            image_id = regions[0]["image_id"]
            images.append({"id": image_id, "file_name": files[image_id]})
            anns += [{"image_id": image_id, "caption": r["phrase"].strip()} for r in regions if r["phrase"].strip()]
        return CocoCaptionDataset({"images": images, "annotations": anns}, self.root, True, proc["image"],
                                  proc["text"])
