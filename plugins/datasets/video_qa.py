"""``video_qa``: video question answering in the MSRVTT-QA / MSVD-QA layout (zero-shot video QA: the frames' query
outputs side by side as the LLM's visual prompt).

Layout under ``root``::

    <root>/videos/video7010.mp4            the clips: MSRVTT from
                                           https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip,
                                           MSVD from https://www.cs.utexas.edu/users/ml/clamp/videoDescription/
    <root>/annotations/<split>_qa.json     [{"id": 0, "video_id": 7010, "question": "...", "answer": "..."}]
                                           (https://github.com/xudejing/video-question-answering)

A record may name its file directly (``"video": "video7010.mp4"``, as LAVIS's annotation files do) instead of a
``video_id`` that ``video_pattern`` turns into a file name (``video{}.mp4`` for MSRVTT, ``vid{}.avi`` for MSVD).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.core.registry import DATASETS
from framework.data.builder import DataFile, DatasetBuilder, ProcessorSpecs
from framework.data.video import VideoQADataset


@DATASETS.register("video_qa")
class VideoQA(DatasetBuilder):
    """Args:
        root: the data set's folder (layout: this module's docstring).
        num_frames: frames sampled uniformly per video (the middle of equal segments).
        video_pattern: file name of a record's ``video_id`` under ``<root>/videos``.
        annotations: annotation file per split, relative to ``root`` (``{split}`` is the split's name).
    """

    how_to_get = ("MSRVTT-QA / MSVD-QA question files: https://github.com/xudejing/video-question-answering; "
                  "the videos from the data sets' own pages (see plugins/datasets/video_qa.py)")

    def __init__(self, entry: str, *, root: str, num_frames: int = 4, video_pattern: str = "video{}.mp4",
                 annotations: str = "annotations/{split}_qa.json",
                 processors: Optional[ProcessorSpecs] = None) -> None:
        super().__init__(entry, processors=processors)
        if num_frames < 1:
            raise ConfigError(f"datasets.{entry}.num_frames must be at least 1, got {num_frames}")
        self.root, self.num_frames = Path(root).expanduser(), num_frames
        self.video_pattern, self.annotations = video_pattern, annotations

    def _file(self, split: str) -> Path:
        return self.root / self.annotations.format(split=split)

    def data_files(self, splits: List[str]) -> List[DataFile]:
        return [DataFile(self._file(s), f"{s} questions") for s in dict.fromkeys(splits)] + [
            DataFile(self.root / "videos", "video folder")]

    def _record(self, r: Dict[str, Any], i: int) -> Dict[str, Any]:
        video = r.get("video") or self.video_pattern.format(r["video_id"])
        return {"question_id": int(r.get("id", r.get("question_id", i))), "video": video, "question": r["question"],
                "answer": r["answer"]}

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        records = [self._record(r, i) for i, r in enumerate(json.loads(self._file(split).read_text()))]
        return VideoQADataset(records, self.root / "videos", self.num_frames, proc["image"], proc["text"])
