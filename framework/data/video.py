"""Video question answering data: frames sampled uniformly from each video with decord, each frame through the image
processors; a sample's ``image`` is a [frames, 3, H, W] tensor, which ``blip2_generative`` reads frame by frame
(encoder and Q-Former per frame, the frames' query outputs concatenated into one visual prompt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from framework.data.datasets import Pipeline


def uniform_frame_indices(total: int, num_frames: int) -> List[int]:
    """The middle frame of each of ``num_frames`` equal segments (frames repeat when the video is shorter)."""
    return [min(total - 1, int((i + 0.5) * total / num_frames)) for i in range(num_frames)]


def read_frames(path: Path, num_frames: int) -> List[Image.Image]:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        frames = reader.get_batch(uniform_frame_indices(len(reader), num_frames)).asnumpy()
    except Exception as e:  # decord raises its own DECORDError (and RuntimeError) for unreadable files
        raise ValueError(f"video {path} cannot be decoded: {type(e).__name__}: {e}") from e
    return [Image.fromarray(np.ascontiguousarray(f)) for f in frames]


class VideoQADataset(Dataset):
    """Records ``{question_id, video (file under video_root), question, answer}``: one answer each (score with
    ``task.metric: exact``, as MSRVTT-QA and MSVD-QA are scored)."""

    def __init__(self, records: List[Dict[str, Any]], video_root: Path, num_frames: int, image_proc: Pipeline,
                 text_proc: Pipeline) -> None:
        self.records, self.video_root, self.num_frames = records, Path(video_root), num_frames
        self.image_proc, self.text_proc = image_proc, text_proc
        videos = list(dict.fromkeys(r["video"] for r in records))
        self.video_ids = {v: i for i, v in enumerate(videos)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        r = self.records[index]
        frames = read_frames(self.video_root / r["video"], self.num_frames)
        if self.image_proc:
            frames = torch.stack([self.image_proc(f) for f in frames])
        question = self.text_proc(r["question"]) if self.text_proc else r["question"]
        return {"image": frames, "image_id": self.video_ids[r["video"]], "index": index,
                "question_id": r["question_id"], "question": question, "answers": [r["answer"]], "answer_type": ""}
