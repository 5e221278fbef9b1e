"""``records``: your own image-caption, image-question-answer or instruction data from a JSON-lines or CSV file,
no Python.

One record per line (``.jsonl``) or per row (``.csv``, with a header row):

* ``kind: caption`` — ``{"image": "photos/001.jpg", "caption": "a dog on a beach"}``; several captions of an
  image: one record each, or ``"captions": [...]`` (JSON lines only).
* ``kind: vqa`` — ``{"image": "photos/001.jpg", "question": "what animal is it?", "answers": ["dog", "dog",
  "puppy"]}``, or ``"answer": "dog"``. A single answer counts as ten identical annotations (so the VQA accuracy
  is an exact match). In a CSV, several answers are separated by ``|``. Text read in the image by an OCR
  system may come along as ``"ocr_tokens": ["STOP", "5th", "Ave"]`` (JSON lines only; the vqa task then puts them
  in the prompt, as LAVIS's InstructBLIP does for TextVQA).
* ``kind: instruction`` — ``{"image": "photos/001.jpg", "instruction": "What is unusual about this image?",
  "output": "The dog wears sunglasses."}`` (InstructBLIP's instruction tuning); several acceptable outputs:
  ``"outputs": [...]`` (JSON lines only; in training one sample each, in evaluation all are references). The
  text processors (an ``instruction_template`` among them) apply to the instruction; the output is the target
  as written. ``"examples": [{"image": ..., "instruction": ...}, ...]`` (JSON lines only) are the record's
  few-shot examples, which a FlanT5 InstructBLIP with ``model.few_shot_prob`` puts before it in training (LAVIS's
  ``few_shot_samples``).

``image`` is relative to ``image_root`` (default: the data file's folder) or absolute, and must lie inside
``image_root``: a path that leaves it (``../``, an absolute path elsewhere) stops the run before training unless
the entry sets ``allow_outside_root: true``. Every record is checked
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
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

from PIL import Image
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from framework.core import dist
from framework.core.errors import BadDataError, MissingDataError
from framework.core.logs import logger
from framework.core.registry import DATASETS
from framework.core.schema import Range
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.datasets import ImageTextDataset

SHOWN = 5  # bad records named in the log / error


@dataclass
class Row:
    line: int  # 1-based line of the file (CSV: the header is line 1)
    image: Path
    texts: List[str]  # captions, [question, *answers] or [instruction, *outputs]
    ocr_tokens: Optional[List[str]] = None  # vqa: words an OCR system read in the image
    examples: Optional[List[Tuple[Path, str]]] = None  # instruction: few-shot examples (image, instruction)

    def images(self) -> List[Path]:
        return [self.image] + [image for image, _ in self.examples or []]


def _read_rows(path: Path, kind: str, image_root: Path) -> Tuple[List[Row], List[str]]:
    """Well-formed rows and a description of each malformed one (a line that is not UTF-8 text among them)."""
    rows, bad = [], []
    lines = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            lines.append((i, raw.decode("utf-8-sig" if i == 1 else "utf-8")))
        except UnicodeDecodeError as e:
            bad.append(f"line {i}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file "
                       f"as UTF-8")
    if path.suffix == ".csv":
        if not lines or lines[0][0] != 1:
            raise BadDataError(f"{path}: the first line must be the CSV header row (image,caption, "
                               f"image,question,answers or image,instruction,output)")
        lines = [(i, line) for i, line in lines if line.strip()]  # the reader skips blank rows too
        records = list(zip([i for i, _ in lines[1:]], csv.DictReader(line for _, line in lines)))
    else:
        records = []
        for i, line in lines:
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


def _texts(value: Any, what: str) -> Tuple[Optional[str], List[str]]:
    """A text field (a string, or for the plural fields a list of strings) as stripped strings, or the problem."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return f"{what} is an empty list", []
    if not all(isinstance(v, str) for v in values):
        wrong = next(v for v in values if not isinstance(v, str))
        return f"{what} is not text ({type(wrong).__name__} {json.dumps(wrong)[:40]})", []
    values = [v.strip() for v in values]
    if not all(values):
        return f"{what} is empty", []
    return None, values


def _parse(r: Any, kind: str, image_root: Path, line: int) -> Tuple[Optional[str], Optional[Row]]:
    if not isinstance(r, dict):
        return f"not a record (a JSON object), but {type(r).__name__}", None
    if not r.get("image"):
        return "no 'image'", None
    if not isinstance(r["image"], str):
        return f"image is not a path ({type(r['image']).__name__} {json.dumps(r['image'])[:40]})", None
    image = _path(r["image"], image_root)
    examples = None
    if kind == "caption":
        field = "captions" if "captions" in r else "caption"
        problem, texts = _texts(r.get(field, ""), field)
    elif kind == "instruction":
        field = "outputs" if "outputs" in r else "output"
        problem, outputs = _texts(r.get(field, ""), field)
        if not problem:
            problem, instruction = _texts(r.get("instruction", ""), "instruction")
            texts = instruction + outputs
        if not problem and "examples" in r:
            problem, examples = _examples(r["examples"], image_root)
    else:
        field = "answers" if r.get("answers") not in (None, "") else "answer"
        value = r.get(field, "")
        if field == "answers" and isinstance(value, str):
            value = value.split("|")  # CSV: answers separated by |
        problem, answers = _texts(value, field)
        if not problem:
            answers = answers * 10 if len(answers) == 1 else answers  # one answer: ten agreeing annotators
            problem, question = _texts(r.get("question", ""), "question")
            texts = question + answers
        ocr = r.get("ocr_tokens")
        if not problem and ocr is not None and not (isinstance(ocr, list) and all(isinstance(t, str) for t in ocr)):
            problem = f"ocr_tokens is not a list of strings ({json.dumps(ocr)[:40]})"
    if problem:
        return problem, None
    return None, Row(line, image, texts, r.get("ocr_tokens") if kind == "vqa" else None, examples)


def _path(name: str, image_root: Path) -> Path:
    image = Path(name).expanduser()
    return image if image.is_absolute() else image_root / image


def _examples(value: Any, image_root: Path) -> Tuple[Optional[str], List[Tuple[Path, str]]]:
    """A record's few-shot ``examples`` as (image path, instruction) pairs, or the problem."""
    if not isinstance(value, list):
        return f"examples is not a list ({json.dumps(value)[:40]})", []
    out = []
    for i, e in enumerate(value):
        if not (isinstance(e, dict) and isinstance(e.get("image"), str) and e["image"]
                and isinstance(e.get("instruction"), str) and e["instruction"].strip()):
            return f"examples[{i}] is not {{\"image\": PATH, \"instruction\": TEXT}} ({json.dumps(e)[:60]})", []
        out.append((_path(e["image"], image_root), e["instruction"].strip()))
    return None, out


def _row_problem(row: Row) -> Optional[str]:
    """The first problem of the record's images (its own, then its examples')."""
    return next((p for p in map(_image_problem, row.images()) if p), None)


def _image_problem(path: Path) -> Optional[str]:
    if not path.is_file():
        return f"image {path} not found"
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: a truncated file fails here, not in the middle of training
    except Exception as e:  # PIL raises many types for undecodable files
        return f"image {path} cannot be decoded ({type(e).__name__}: {e})"
    return None


class RecordDataset(ImageTextDataset):
    """Samples as the COCO caption / VQAv2 datasets give them (``text_input`` or ``captions``; ``question``,
    ``answers``), so every task reads them unchanged; instructions as the ``instruction`` task reads them
    (``instruction``, ``record_id``, and ``text_output`` in training or ``outputs`` in evaluation)."""

    def __init__(self, rows: List[Row], kind: str, train: bool, image_proc, text_proc) -> None:
        super().__init__(Path(), image_proc, text_proc)  # row paths are complete
        ids: Dict[Path, int] = {}
        for row in rows:
            ids.setdefault(row.image, len(ids))
        if kind == "vqa":
            # OCR tokens in a file: every sample has them ([] where a record has none), so a batch has them or not
            ocr = any(r.ocr_tokens is not None for r in rows)
            self.samples = [{"file": r.image, "image_id": ids[r.image], "question_id": r.line, "question": r.texts[0],
                             "answers": r.texts[1:]} | ({"ocr_tokens": r.ocr_tokens or []} if ocr else {})
                            for r in rows]
        elif kind == "instruction" and train:
            # examples in a file: every training sample has them (none where a record has none)
            shots = any(r.examples is not None for r in rows)
            self.samples = [{"file": r.image, "image_id": ids[r.image], "record_id": r.line, "instruction": r.texts[0],
                             "text_output": o} | ({"examples": r.examples or []} if shots else {})
                            for r in rows for o in r.texts[1:]]
        elif kind == "instruction":
            self.samples = [{"file": r.image, "image_id": ids[r.image], "record_id": r.line, "instruction": r.texts[0],
                             "outputs": r.texts[1:]} for r in rows]
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
                          "answers": s["answers"], "answer_type": ""} | (
                {"ocr_tokens": s["ocr_tokens"]} if "ocr_tokens" in s else {})
        if self.kind == "instruction":  # the record's line identifies it, as a question id does
            out |= {"record_id": s["record_id"], "instruction": self.text(s["instruction"])} | (
                {"text_output": s["text_output"]} if "text_output" in s else {"outputs": s["outputs"]})
            if "examples" in s:  # as LAVIS's few_shot_samples: the images stacked, the instructions processed
                images = [self.image(f) for f, _ in s["examples"]]
                out["few_shot_samples"] = {"image": torch.stack(images) if images else torch.empty(0),
                                           "text_input": [self.text(t) for _, t in s["examples"]]}
            return out
        if "caption" in s:
            return out | {"text_input": self.text(s["caption"])}
        return out | {"captions": s["captions"]}


@DATASETS.register("records")
class RecordsBuilder(DatasetBuilder):
    """Args:
        kind: ``caption`` (image-caption pairs), ``vqa`` (image-question-answers) or ``instruction``
            (image-instruction-output).
        files: split name -> a ``.jsonl`` or ``.csv`` file of records (format: this module's docstring). An entry
            is evaluated on the evaluation splits it has a file for (a second instruction set may train only).
        image_root: the folder image paths are relative to (default: each data file's folder).
        max_bad_fraction: the share of bad records above which the run stops before training.
        check_images: decode every image once before training (finds truncated files; costs about a
            millisecond per image, on as many threads as there are cores).
        allow_outside_root: let image paths leave ``image_root`` (``../``, absolute paths elsewhere); off, such a
            record stops the run, so that a records file cannot make the run read files you did not point it at.
        image_size: the side the images are brought to (it must be the model's image encoder's) where
            ``processors`` gives no image pipeline: training images get LAVIS's random crop (scale 0.5-1) and
            flip, evaluation images a resize, both CLIP's normalisation.
        processors: ``{train|eval: {image|text: [specs]}}``. null: the images as ``image_size`` says, the text
            LAVIS's cleaning for captions and questions, an instruction as written. Given, an image pipeline it
            leaves out is still the ``image_size`` one (so ``processors: {train: {text: [{name:
            instruction_template, ...}]}}`` adds templates and keeps the images' processing), a text one is none.
    """

    how_to_get = "these are your own files: check the paths in files: and image_root:"

    def __init__(self, entry: str, *, kind: Literal["caption", "vqa", "instruction"], files: Dict[str, str],
                 image_root: Optional[str] = None, max_bad_fraction: Annotated[float, Range(0, 1)] = 0.1,
                 check_images: bool = True, allow_outside_root: bool = False,
                 image_size: Annotated[int, Range(1)] = 224, processors: Optional[ProcessorSpecs] = None) -> None:
        clean = {"caption": [{"name": "clean_caption", "max_words": 50}],
                 "vqa": [{"name": "clean_question", "max_words": 50}], "instruction": []}[kind]
        defaults = {
            "train": {"image": [{"name": "random_resized_crop", "size": image_size, "scale": [0.5, 1.0]},
                                {"name": "hflip"}, {"name": "normalize", "stats": "clip"}], "text": clean},
            "eval": {"image": [{"name": "resize", "size": image_size}, {"name": "normalize", "stats": "clip"}],
                     "text": clean}}
        if processors is not None:
            processors = {split: {"image": pipelines["image"], **processors.get(split, {})}
                          for split, pipelines in defaults.items()}
        super().__init__(entry, processors=processors or defaults)
        self.kind, self.max_bad_fraction, self.check_images = kind, max_bad_fraction, check_images
        self.allow_outside_root = allow_outside_root
        self.files = {split: Path(f).expanduser() for split, f in files.items()}
        self.image_root = Path(image_root).expanduser() if image_root else None

    def has_split(self, split: str) -> bool:
        return split in self.files

    def data_files(self, splits: List[str]) -> List[DataFile]:
        """The files of the splits this entry has (the run checks that each of its splits is some entry's)."""
        return [DataFile(self.files[s], f"{s} records ({self.kind})") for s in dict.fromkeys(splits) if s in self.files]

    def rows(self, split: str) -> List[Row]:
        """The good records of ``split``; the bad ones are logged, or stop the run when too many."""
        path = self.files[split]
        if not path.is_file():
            raise MissingDataError(f"dataset entry {self.entry!r}: {split} records {path} do not exist; "
                                   f"{self.how_to_get}")
        root = self.image_root or path.parent
        rows, bad = _read_rows(path, self.kind, root)
        if not self.allow_outside_root:
            inside = root.resolve()
            outside = [r for r in rows if not all(i.resolve().is_relative_to(inside) for i in r.images())]
            if outside:
                shown = "; ".join(f"line {r.line}: {r.image}" for r in outside[:SHOWN])
                raise BadDataError(f"dataset entry {self.entry!r}: {len(outside)} records of {path} name images "
                                   f"outside its image root {inside} ({shown}). Move them under it, set "
                                   f"datasets.{self.entry}.image_root to a folder that holds them, or allow it with "
                                   f"datasets.{self.entry}.allow_outside_root: true")
        problems = [None] * len(rows)
        if self.check_images:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                problems = list(tqdm(pool.map(_row_problem, rows), total=len(rows),
                                     desc=f"{self.entry}/{split}: checking images", disable=not dist.is_main(),
                                     leave=False))
        else:
            problems = [next((f"image {i} not found" for i in r.images() if not i.is_file()), None) for r in rows]
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
