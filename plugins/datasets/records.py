"""``records``: your own image-caption or image-question-answer data from a JSON-lines or CSV file, no Python.

One record per line (``.jsonl``) or per row (``.csv``, with a header row):

* ``kind: caption`` — ``{"image": "photos/001.jpg", "caption": "a dog on a beach"}``; several captions of an
  image: one record each, or ``"captions": [...]`` (JSON lines only).
* ``kind: vqa`` — ``{"image": "photos/001.jpg", "question": "what animal is it?", "answers": ["dog", "dog",
  "puppy"]}``, or ``"answer": "dog"``. A single answer counts as ten identical annotations (so the VQA accuracy
  is an exact match). In a CSV, several answers are separated by ``|``.

``image`` is relative to ``image_root`` (default: the data file's folder) or absolute. Every record is checked
before training: a missing image file, an image that cannot be decoded (unreadable, truncated), an empty
caption, question or answer, or a line that is not a record is skipped and counted, and the first few are named
in the log. When more than ``max_bad_fraction`` of a file's records are bad, the run stops before training.

Train on it with a ``datasets_cfg`` entry (``builder: records``), or with ``--options`` alone (``_delete_``
replaces the config's data sets instead of adding to them)::

    python -m framework.train --cfg projects/blip2/demo/stage2_shapes.yaml --options \\
        'datasets={_delete_: true, mine: {builder: records, kind: caption, files: {train: my/train.jsonl, val: my/val.jsonl}}}'
"""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from framework import dist
from framework.data.builder import BadDataError, DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import _Base
from framework.logs import logger
from framework.registry import DATASETS

SHOWN = 5  # bad records named in the log / error


@dataclass
class Row:
    line: int  # 1-based line of the file (CSV: the header is line 1)
    image: Path
    texts: List[str]  # captions, or [question, *answers]


def _read_rows(path: Path, kind: str, image_root: Path) -> Tuple[List[Row], List[str]]:
    """Well-formed rows and a description of each malformed one."""
    rows, bad = [], []
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            records = [(i + 2, r) for i, r in enumerate(csv.DictReader(f))]
    else:
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append(f"line {i}: not a JSON record ({e.msg})")
    for line, r in records:
        problem, row = _parse(r, kind, image_root, line)
        if problem:
            bad.append(f"line {line}: {problem}")
        else:
            rows.append(row)
    return rows, bad


def _split_answers(value: Any) -> List[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split("|")


def _parse(r: Any, kind: str, image_root: Path, line: int) -> Tuple[Optional[str], Optional[Row]]:
    if not isinstance(r, dict) or not r.get("image"):
        return "no 'image'", None
    image = Path(r["image"]) if Path(r["image"]).is_absolute() else image_root / r["image"]
    if kind == "caption":
        texts = r.get("captions") if isinstance(r.get("captions"), list) else [r.get("caption") or ""]
        texts = [str(t).strip() for t in texts]
        if not all(texts):
            return "caption is empty", None
    else:
        answers = _split_answers(r["answers"]) if r.get("answers") else [str(r.get("answer") or "")]
        answers = answers * 10 if len(answers) == 1 else answers  # one answer: ten agreeing annotators
        texts = [str(r.get("question") or "").strip()] + [a.strip() for a in answers]
        if not all(texts):
            return "question or answer is empty", None
    return None, Row(line, image, texts)


def _image_problem(path: Path) -> Optional[str]:
    if not path.is_file():
        return f"image {path} not found"
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: a truncated file fails here, not in the middle of training
    except Exception as e:  # PIL raises many types for undecodable files
        return f"image {path} cannot be decoded ({type(e).__name__}: {e})"
    return None


class RecordDataset(_Base):
    """Samples as the COCO caption / VQAv2 datasets give them (``text_input`` or ``captions``; ``question``,
    ``answers``), so every task reads them unchanged."""

    def __init__(self, rows: List[Row], kind: str, train: bool, image_proc, text_proc) -> None:
        super().__init__(Path(), image_proc, text_proc)  # row paths are complete
        ids: Dict[Path, int] = {}
        for row in rows:
            ids.setdefault(row.image, len(ids))
        if kind == "vqa":
            self.samples = [{"file": r.image, "image_id": ids[r.image], "question_id": r.line, "question": r.texts[0],
                             "answers": r.texts[1:]} for r in rows]
        elif train:
            self.samples = [{"file": r.image, "image_id": ids[r.image], "caption": c} for r in rows for c in r.texts]
        else:
            refs: Dict[Path, List[str]] = {}
            for r in rows:
                refs.setdefault(r.image, []).extend(r.texts)
            self.samples = [{"file": f, "image_id": ids[f], "captions": c} for f, c in refs.items()]
        self.kind = kind

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.samples[index]
        out = {"image": self.image(s["file"]), "image_id": s["image_id"], "index": index}
        if self.kind == "vqa":
            return out | {"question_id": s["question_id"], "question": self.text(s["question"]),
                          "answers": s["answers"], "answer_type": ""}
        if "caption" in s:
            return out | {"text_input": self.text(s["caption"])}
        return out | {"captions": s["captions"]}


@DATASETS.register("records")
class RecordsBuilder(DatasetBuilder):
    """Args:
        kind: ``caption`` (image-caption pairs) or ``vqa`` (image-question-answers).
        files: split name -> a ``.jsonl`` or ``.csv`` file of records (format: this module's docstring).
        image_root: the folder image paths are relative to (default: each data file's folder).
        max_bad_fraction: the share of bad records above which the run stops before training.
        check_images: decode every image once before training (finds truncated files; costs about a
            millisecond per image, on as many threads as there are cores).
    """

    how_to_get = "these are your own files: check the paths in files: and image_root:"

    def __init__(self, entry: str, *, kind: Literal["caption", "vqa"], files: Dict[str, str],
                 image_root: Optional[str] = None, max_bad_fraction: float = 0.1, check_images: bool = True,
                 processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        self.kind, self.max_bad_fraction, self.check_images = kind, max_bad_fraction, check_images
        self.files = {split: Path(f).expanduser() for split, f in files.items()}
        self.image_root = Path(image_root).expanduser() if image_root else None

    def data_files(self, splits: List[str]) -> List[DataFile]:
        unknown = [s for s in splits if s not in self.files]
        if unknown:
            raise BadDataError(f"dataset entry {self.entry!r}: no file for split(s) {unknown}; set "
                               f"datasets.{self.entry}.files.<split> (it has {sorted(self.files)})")
        return [DataFile(self.files[s], f"{s} records ({self.kind})") for s in dict.fromkeys(splits)]

    def rows(self, split: str) -> List[Row]:
        """The good records of ``split``; the bad ones are logged, or stop the run when too many."""
        path = self.files[split]
        rows, bad = _read_rows(path, self.kind, self.image_root or path.parent)
        problems = [None] * len(rows)
        if self.check_images:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                problems = list(tqdm(pool.map(_image_problem, [r.image for r in rows]), total=len(rows),
                                     desc=f"{self.entry}/{split}: checking images", disable=not dist.is_main(),
                                     leave=False))
        else:
            problems = [None if r.image.is_file() else f"image {r.image} not found" for r in rows]
        bad += [f"line {r.line}: {p}" for r, p in zip(rows, problems) if p]
        good = [r for r, p in zip(rows, problems) if not p]
        total = len(good) + len(bad)
        if bad:
            shown = "; ".join(bad[:SHOWN]) + (f"; ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
            if not total or len(bad) / total > self.max_bad_fraction:
                raise BadDataError(f"dataset entry {self.entry!r}: {len(bad)} of {total} records of {path} are bad "
                                   f"({100 * len(bad) / max(total, 1):.0f}%, more than max_bad_fraction "
                                   f"{self.max_bad_fraction}): {shown}. Fix them, or raise "
                                   f"datasets.{self.entry}.max_bad_fraction")
            logger.warning("dataset entry %r: skipped %d of %d records of %s: %s", self.entry, len(bad), total,
                           path, shown)
        return good

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        return RecordDataset(self.rows(split), self.kind, split == "train", proc["image"], proc["text"])
