"""``nocaps``: NoCaps validation / test captions (the paper's zero-shot captioning, Table 3), with each
image's domain (in-, near-, out-domain) on its samples so results can be split by domain.

Layout under ``root``::

    <root>/nocaps_val_4500_captions.json   <root>/nocaps_test_image_info.json   (https://nocaps.org/download)
    <root>/images/<file_name>              the Open Images validation/test images NoCaps names
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import CocoCaptionDataset

FILES = {"val": "nocaps_val_4500_captions.json", "test": "nocaps_test_image_info.json"}


class NoCapsDataset(CocoCaptionDataset):
    """COCO caption samples plus ``domain``."""

    def __init__(self, data: Dict[str, Any], image_root: Path, image_proc, text_proc) -> None:
        super().__init__(data, image_root, False, image_proc, text_proc)
        domains = {im["id"]: im.get("domain", "") for im in data["images"]}
        for s in self.samples:
            s["domain"] = domains[s["image_id"]]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return super().__getitem__(index) | {"domain": self.samples[index]["domain"]}


@DATASETS.register("nocaps")
class NoCaps(DatasetBuilder):
    """Args:
        root: the NoCaps folder (layout: this module's docstring). Splits: ``val`` (with captions), ``test``
            (image list only: predictions go to the evaluation server).
    """

    how_to_get = "NoCaps annotations and image lists: https://nocaps.org/download"

    def __init__(self, entry: str, *, root: str, processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.root = Path(root).expanduser()

    def data_files(self, splits: List[str]) -> List[DataFile]:
        wrong = [s for s in splits if s not in FILES]
        if wrong:
            raise ConfigError(f"dataset entry {self.entry!r}: NoCaps has splits val and test, not {wrong} "
                              f"(it is an evaluation set: an evaluation config sets run.train_splits: [])")
        return [DataFile(self.root / FILES[s], f"{s} annotations") for s in splits] + [
            DataFile(self.root / "images", "images")]

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        data = json.loads((self.root / FILES[split]).read_text())
        data.setdefault("annotations", [])
        return NoCapsDataset(data, self.root / "images", proc["image"], proc["text"])
