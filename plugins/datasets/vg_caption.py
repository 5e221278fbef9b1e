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
from typing import List, Optional

from torch.utils.data import Dataset

from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import CocoCaptionDataset
from framework.errors import ConfigError
from framework.registry import DATASETS


@DATASETS.register("vg_caption")
class VGCaption(DatasetBuilder):
    """Args:
        root: the Visual Genome folder (layout: this module's docstring). One split, ``train``.
        max_per_image: region phrases kept per image (the first ones; null: all, about 50 per image).
    """

    how_to_get = "Visual Genome v1.2 images, image_data.json, region_descriptions.json: " \
                 "https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"

    def __init__(self, entry: str, *, root: str, max_per_image: Optional[int] = None,
                 processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root, self.max_per_image = Path(root).expanduser(), max_per_image

    def data_files(self, splits: List[str]) -> List[DataFile]:
        if set(splits) - {"train"}:
            raise ConfigError(f"dataset entry {self.entry!r}: Visual Genome captions have one split, train "
                              f"(asked for {splits}); evaluate on another entry")
        return [DataFile(self.root / "image_data.json", "image list"),
                DataFile(self.root / "region_descriptions.json", "region descriptions"),
                DataFile(self.root, "VG_100K / VG_100K_2 image folders")]

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        # an image's folder is the second-to-last part of its url (.../VG_100K_2/1.jpg)
        files = {im["image_id"]: "/".join(im["url"].split("/")[-2:])
                 for im in json.loads((self.root / "image_data.json").read_text())}
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
