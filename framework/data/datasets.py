"""Map-style datasets over the standard annotation formats; every sample is a dict.

Sample keys: ``image`` (tensor after processors), ``image_id``, and by kind ``text_input`` (a caption),
``captions`` (all reference captions, evaluation), ``question``, ``question_id``, ``answers`` (list of ten),
``answer_type`` (VQAv2's yes/no, number, other; "" when the annotations have none),
``index`` (position in the dataset, for exact data-order checks).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch.utils.data import Dataset

from framework.data.builder import Pipeline
from framework.data.images import load_image

Source = Union[str, Path, Dict[str, Any], List[Any]]  # an annotation file, or its content already loaded


def karpathy(data: Dict[str, Any], split: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Karpathy's split file (``dataset_coco.json``, ``dataset_flickr30k.json``) as (COCO caption JSON,
    retrieval list) for ``split``; his ``restval`` images belong to ``train``, as in every BLIP-2 number."""
    wanted = {"train": ("train", "restval")}.get(split, (split,))
    images, anns, retrieval = [], [], []
    for im in data["images"]:
        if im["split"] not in wanted:
            continue
        image_id = im.get("cocoid", im.get("imgid"))
        file_name = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        captions = [s["raw"].strip() for s in im["sentences"]]
        images.append({"id": image_id, "file_name": file_name})
        anns += [{"image_id": image_id, "caption": c} for c in captions]
        retrieval.append({"image": file_name, "image_id": image_id, "caption": captions})
    return {"images": images, "annotations": anns}, retrieval


def _json(source: Any) -> Any:
    """A JSON annotation file's content: read from a path, or given already loaded (a builder that converts
    another official format passes the converted records)."""
    return json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else source


class ImageTextDataset(Dataset):
    """The base of the map-style data sets (a plugin's own included): ``samples`` (one dict each), images read
    from ``image_root`` with :func:`framework.data.images.load_image` and the image processors, or, where a frozen
    encoder's features are cached, its tokens; texts through the text processors."""

    feature_cache: Any = None  # a FeatureCache: image() gives the frozen encoder's cached tokens instead

    def __init__(self, image_root: Path, image_proc: Optional[Pipeline], text_proc: Optional[Pipeline]) -> None:
        self.image_root = Path(image_root)
        self.image_proc = image_proc
        self.text_proc = text_proc
        self.samples: List[Dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, file_name: str) -> Any:
        if self.feature_cache is not None:
            return self.feature_cache[file_name]
        img = load_image(self.image_root / file_name)
        return self.image_proc(img) if self.image_proc else img

    def text(self, s: str) -> str:
        return self.text_proc(s) if self.text_proc else s


class CocoCaptionDataset(ImageTextDataset):
    """COCO caption JSON (``images`` + ``annotations``). Training: one sample per caption; evaluation: one per
    image with every reference caption."""

    def __init__(self, ann_file: Source, image_root: Path, train: bool, image_proc: Optional[Pipeline] = None,
                 text_proc: Optional[Pipeline] = None) -> None:
        super().__init__(image_root, image_proc, text_proc)
        data = _json(ann_file)
        files = {im["id"]: im["file_name"] for im in data["images"]}
        refs: Dict[int, List[str]] = {}
        for a in data["annotations"]:
            refs.setdefault(a["image_id"], []).append(a["caption"])
        if train:
            self.samples = [{"image_id": a["image_id"], "file": files[a["image_id"]], "caption": a["caption"]}
                            for a in data["annotations"]]
        else:
            self.samples = [{"image_id": i, "file": f, "captions": refs.get(i, [])} for i, f in files.items()]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.samples[index]
        out = {"image": self.image(s["file"]), "image_id": s["image_id"], "index": index}
        if "caption" in s:
            out["text_input"] = self.text(s["caption"])
        else:
            out["captions"] = s["captions"]
        return out


class VQADataset(ImageTextDataset):
    """VQAv2 question + annotation JSON; ``image_file(image_id)`` names an image relative to ``image_root``."""

    def __init__(self, question_file: Source, ann_file: Optional[Source], image_root: Path,
                 image_file: Callable[[int], str], image_proc: Optional[Pipeline] = None,
                 text_proc: Optional[Pipeline] = None) -> None:
        super().__init__(image_root, image_proc, text_proc)
        questions = _json(question_file)["questions"]
        anns = {}
        if ann_file is not None:
            anns = {a["question_id"]: a for a in _json(ann_file)["annotations"]}
        self.samples = [{"question_id": q["question_id"], "image_id": q["image_id"], "question": q["question"],
                         "file": image_file(q["image_id"]),
                         "answers": [x["answer"] for x in anns.get(q["question_id"], {}).get("answers", [])],
                         "answer_type": anns.get(q["question_id"], {}).get("answer_type", "")} for q in questions]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.samples[index]
        return {"image": self.image(s["file"]), "image_id": s["image_id"], "index": index,
                "question_id": s["question_id"], "question": self.text(s["question"]), "answers": s["answers"],
                "answer_type": s["answer_type"]}


class RetrievalDataset(ImageTextDataset):
    """Karpathy-style retrieval JSON: a list of ``{image, image_id, caption: [..]}``. Training: one sample per
    caption; evaluation: the images here, the texts in ``self.texts`` with ``txt2img`` / ``img2txt`` maps."""

    def __init__(self, ann_file: Source, image_root: Path, train: bool, image_proc: Optional[Pipeline] = None,
                 text_proc: Optional[Pipeline] = None) -> None:
        super().__init__(image_root, image_proc, text_proc)
        records = _json(ann_file)
        self.texts: List[str] = []
        self.txt2img: List[int] = []
        self.img2txt: List[List[int]] = []
        for img_idx, r in enumerate(records):
            caps = r["caption"] if isinstance(r["caption"], list) else [r["caption"]]
            self.img2txt.append([])
            for c in caps:
                self.img2txt[-1].append(len(self.texts))
                self.texts.append(self.text(c))
                self.txt2img.append(img_idx)
                if train:
                    self.samples.append({"image_id": r["image_id"], "file": r["image"], "caption": c})
            if not train:
                self.samples.append({"image_id": r["image_id"], "file": r["image"]})

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.samples[index]
        out = {"image": self.image(s["file"]), "image_id": s["image_id"], "index": index}
        if "caption" in s:
            out["text_input"] = self.text(s["caption"])
        return out
