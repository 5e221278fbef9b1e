"""``shapes``: a generated image-text data set, so every pipeline runs on a laptop with no download.

Each image holds one to three coloured geometric shapes (circle, square, triangle), each in its own column
of a 3 x 3 grid (so "left of" is never ambiguous), each colour at most once per image. Images are PNG
(lossless, no anti-aliasing: a pixel's colour names its shape). Annotations are written in the real formats
so the same loaders read them as COCO, VQAv2 and the Karpathy retrieval splits:

    <cache_dir>/shapes-<fingerprint>/
        images/<split>/<image_id>.png
        annotations/captions_<split>.json        COCO captions (five different captions per image)
        annotations/vqa_questions_<split>.json   VQAv2 questions
        annotations/vqa_annotations_<split>.json VQAv2 annotations (ten answers per question)
        annotations/retrieval_<split>.json       [{image, image_id, caption: [..]}]
        annotations/objects_<split>.json         what was drawn: colour, shape, column, row, box

The folder name fingerprints every generation argument, so a changed argument generates a new set; the
same arguments give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from tqdm import tqdm

from framework.core import dist
from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.core.schema import Range
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import CocoCaptionDataset, RetrievalDataset, VQADataset
from framework.data.images import load_image

GENERATOR_VERSION = 1
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20),
          "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
COLUMNS = ("on the left", "in the middle", "on the right")
NUMBERS = ("zero", "one", "two", "three")
BACKGROUND = (255, 255, 255)
SPLIT_ID_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


# ------------------------------------------------------------------------------------------------ drawing
def _objects(rng: np.random.Generator, size: int) -> List[Dict[str, Any]]:
    n = int(rng.integers(1, 4))
    cols = rng.choice(3, size=n, replace=False)
    colors = rng.choice(list(COLORS), size=n, replace=False)
    cell = size / 3
    out = []
    for col, color in zip(cols, colors):
        row = int(rng.integers(0, 3))
        half = cell * rng.uniform(0.28, 0.42)
        cx = cell * (col + 0.5) + rng.uniform(-1, 1) * (cell / 2 - half - 1)
        cy = cell * (row + 0.5) + rng.uniform(-1, 1) * (cell / 2 - half - 1)
        box = [round(cx - half), round(cy - half), round(cx + half), round(cy + half)]
        out.append({"color": str(color), "shape": SHAPES[int(rng.integers(0, 3))], "column": int(col),
                    "row": row, "box": box})
    return sorted(out, key=lambda o: o["column"])


def _draw(objects: List[Dict[str, Any]], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        fill = COLORS[o["color"]]
        if o["shape"] == "circle":
            d.ellipse([x0, y0, x1, y1], fill=fill)
        elif o["shape"] == "square":
            d.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


# ------------------------------------------------------------------------------------------------ language
def _phrase(o: Dict[str, Any]) -> str:
    article = "an" if o["color"][0] in "aeiou" else "a"
    return f"{article} {o['color']} {o['shape']}"


def _listing(objs: List[Dict[str, Any]]) -> str:
    words = [_phrase(o) for o in objs]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def captions(objects: List[Dict[str, Any]], rng: np.random.Generator) -> List[str]:
    """Five different true captions; every one names every object."""
    n = len(objects)
    shuffled = [objects[i] for i in rng.permutation(n)]
    count = f"{NUMBERS[n]} shape{'s' if n > 1 else ''}"
    placed = ", ".join(f"{_phrase(o)} {COLUMNS[o['column']]}" for o in objects)
    ordered = f"{_listing(objects)} from left to right" if n > 1 else f"a single {objects[0]['color']} {objects[0]['shape']}"
    return [_listing(shuffled), f"{count}: {_listing(shuffled)}", placed, ordered, f"a picture of {_listing(shuffled)}"]


def questions(objects: List[Dict[str, Any]], rng: np.random.Generator) -> List[Dict[str, str]]:
    """Questions about colour, shape, count and relative position, each with its one true answer."""
    o = objects[int(rng.integers(0, len(objects)))]
    qs = [{"question": f"what shape is the {o['color']} object?", "answer": o["shape"], "type": "other"},
          {"question": "how many shapes are there?", "answer": str(len(objects)), "type": "number"}]
    asked = SHAPES[int(rng.integers(0, 3))]
    qs.append({"question": f"how many {asked}s are there?",
               "answer": str(sum(x["shape"] == asked for x in objects)), "type": "number"})
    if sum(x["shape"] == o["shape"] for x in objects) == 1:
        qs.append({"question": f"what color is the {o['shape']}?", "answer": o["color"], "type": "other"})
    if len(objects) > 1:
        a, b = (objects[i] for i in rng.choice(len(objects), size=2, replace=False))
        qs.append({"question": f"is the {a['color']} {a['shape']} to the left of the {b['color']} {b['shape']}?",
                   "answer": "yes" if a["column"] < b["column"] else "no", "type": "yes/no"})
    return qs


# ------------------------------------------------------------------------------------------------ writing
def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def generate(root: Path, seed: int, image_size: int, num_images: Dict[str, int]) -> None:
    """Write the whole set into ``root`` (into a temporary folder first, renamed when complete)."""
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    for split_idx, (split, count) in enumerate(sorted(num_images.items())):
        (tmp / "images" / split).mkdir(parents=True)
        images, caps, vq, va, ret, objs = [], [], [], [], [], []
        for i in tqdm(range(count), desc=f"shapes {split}", disable=not dist.is_main(), leave=False):
            rng = np.random.default_rng([seed, split_idx, i])
            image_id = SPLIT_ID_OFFSET.get(split, 30_000_000 + split_idx * 10_000_000) + i
            objects = _objects(rng, image_size)
            file_name = f"{split}/{image_id}.png"
            _draw(objects, image_size).save(tmp / "images" / file_name)
            texts = captions(objects, rng)
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            caps += [{"id": image_id * 10 + k, "image_id": image_id, "caption": c} for k, c in enumerate(texts)]
            ret.append({"image": file_name, "image_id": image_id, "caption": texts})
            objs.append({"image_id": image_id, "objects": objects})
            for k, q in enumerate(questions(objects, rng)):
                qid = image_id * 10 + k
                vq.append({"question_id": qid, "image_id": image_id, "question": q["question"]})
                va.append({"question_id": qid, "image_id": image_id, "answer_type": q["type"],
                           "question_type": " ".join(q["question"].split()[:3]),
                           "multiple_choice_answer": q["answer"],
                           "answers": [{"answer": q["answer"], "answer_confidence": "yes", "answer_id": j + 1}
                                       for j in range(10)]})
        info = {"description": f"shapes {split} (seed {seed}, {image_size}px)", "version": GENERATOR_VERSION}
        ann = tmp / "annotations"
        _dump(ann / f"captions_{split}.json", {"info": info, "licenses": [], "images": images, "annotations": caps})
        _dump(ann / f"vqa_questions_{split}.json", {"info": info, "task_type": "Open-Ended", "data_type": "shapes",
                                                   "data_subtype": split, "questions": vq})
        _dump(ann / f"vqa_annotations_{split}.json", {"info": info, "data_type": "shapes", "data_subtype": split,
                                                     "annotations": va})
        _dump(ann / f"retrieval_{split}.json", ret)
        _dump(ann / f"objects_{split}.json", objs)
    os.replace(tmp, root)


# ------------------------------------------------------------------------------------------------ builder
# what a column of the 3 x 3 grid holds: nothing, or one coloured shape
COLUMN_CLASSES = ["empty"] + [f"{c} {s}" for c in COLORS for s in SHAPES]


class AttributeDataset(Dataset):
    """Images with ``labels``: for each of the three columns, the index in :data:`COLUMN_CLASSES` of what it
    holds (which coloured shape, or nothing)."""

    def __init__(self, objects_file: Path, image_root: Path, split: str, image_proc) -> None:
        self.records = json.loads(objects_file.read_text())
        self.image_root, self.split, self.image_proc = image_root, split, image_proc

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        r = self.records[i]
        labels = torch.zeros(3, dtype=torch.long)
        for o in r["objects"]:
            labels[o["column"]] = COLUMN_CLASSES.index(f"{o['color']} {o['shape']}")
        image = load_image(self.image_root / self.split / f"{r['image_id']}.png")
        return {"image": self.image_proc(image) if self.image_proc else image, "labels": labels,
                "image_id": r["image_id"], "index": i}


@DATASETS.register("shapes")
class ShapesBuilder(DatasetBuilder):
    """Builds caption, VQA, retrieval or attribute splits of the generated shapes set (``annotations`` picks
    which). ``attributes`` samples carry ``labels``: what each column holds, the targets that pretrain the
    demo's unimodal image encoder.

    Args:
        annotations: which annotation kind the samples carry.
        cache_dir: where generated sets live (a folder per fingerprint).
        seed, image_size, num_images: generation arguments; ``num_images`` maps split name -> image count.
    """

    how_to_get = "shapes is generated on first use; rerun, or delete the folder to regenerate it"

    def __init__(self, entry: str, *, annotations: Literal["caption", "vqa", "retrieval", "attributes"],
                 processors: Optional[ProcessorSpecs] = None, cache_dir: str = "~/.cache/blip2_framework",
                 seed: int = 0, image_size: Annotated[int, Range(16)] = 64,
                 num_images: Optional[Dict[str, Annotated[int, Range(1)]]] = None) -> None:
        super().__init__(entry, processors=processors)
        self.annotations = annotations
        self.seed, self.image_size = seed, image_size
        self.num_images = dict(num_images or {"train": 2000, "val": 200, "test": 200})
        key = json.dumps([GENERATOR_VERSION, seed, image_size, sorted(self.num_images.items())]).encode()
        self.root = Path(cache_dir).expanduser() / f"shapes-{hashlib.sha1(key).hexdigest()[:10]}"

    def _ann(self, split: str) -> List[Path]:
        a = self.root / "annotations"
        return {"caption": [a / f"captions_{split}.json"],
                "vqa": [a / f"vqa_questions_{split}.json", a / f"vqa_annotations_{split}.json"],
                "retrieval": [a / f"retrieval_{split}.json"],
                "attributes": [a / f"objects_{split}.json"]}[self.annotations]

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(p, f"{split} {self.annotations} annotations", generated=True)
                for split in dict.fromkeys(splits) for p in self._ann(split)] + [
            DataFile(self.root / "images", "images", generated=True)]

    def prepare(self, splits: List[str]) -> None:
        unknown = sorted(set(splits) - set(self.num_images))
        if unknown:
            raise ConfigError(f"dataset entry {self.entry!r}: splits {unknown} are not generated; shapes has "
                             f"{sorted(self.num_images)} (set datasets.{self.entry}.num_images)")
        if dist.is_main() and not self.root.exists():
            generate(self.root, self.seed, self.image_size, self.num_images)
        dist.barrier()

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        images = self.root / "images"
        train = split == "train"
        if self.annotations == "caption":
            return CocoCaptionDataset(self._ann(split)[0], images, train, proc["image"], proc["text"])
        if self.annotations == "retrieval":
            return RetrievalDataset(self._ann(split)[0], images, train, proc["image"], proc["text"])
        if self.annotations == "attributes":
            return AttributeDataset(self._ann(split)[0], images, split, proc["image"])
        q, a = self._ann(split)
        return VQADataset(q, a, images, lambda image_id: f"{split}/{image_id}.png", proc["image"], proc["text"])
