"""``vg_vqa``: Visual Genome's question-answer pairs, which the paper adds to VQAv2's for VQA fine-tuning.

Layout under ``root`` (the same folder as ``vg_caption``)::

    <root>/VG_100K/*.jpg  <root>/VG_100K_2/*.jpg         (https://homes.cs.washington.edu/~ranjay/visualgenome/)
    <root>/image_data.json                               which folder each image is in (its url)
    <root>/question_answers.json

One answer per question, written as VG writes them ("Green."): the target is it lower-cased without the closing
period, as VQAv2's answers are written.
"""
from __future__ import annotations

import json

from torch.utils.data import Dataset

from framework.core.registry import DATASETS
from framework.data.datasets import VQADataset
from plugins.datasets.vg_caption import VisualGenomeBuilder, image_files


def vqa_answer(answer: str) -> str:
    """A Visual Genome answer as VQAv2 writes its answers: lower case, no closing period."""
    return answer.strip().rstrip(".").strip().lower()


@DATASETS.register("vg_vqa")
class VGVQA(VisualGenomeBuilder):
    """Args:
        root: the Visual Genome folder (layout: this module's docstring). One split, ``train``.
    """

    annotations = ("question_answers.json", "question-answer pairs")

    def build(self, split: str) -> Dataset:
        proc = self.processors(split)
        files = image_files(self.root)
        questions, annotations = [], []
        for entry in json.loads((self.root / "question_answers.json").read_text()):
            for qa in entry["qas"]:
                answer = vqa_answer(qa["answer"])
                if not answer:
                    continue
                questions.append({"question_id": qa["qa_id"], "image_id": qa["image_id"], "question": qa["question"]})
                annotations.append({"question_id": qa["qa_id"], "answers": [{"answer": answer}]})
        return VQADataset({"questions": questions}, {"annotations": annotations}, self.root, files.__getitem__,
                          proc["image"], proc["text"])
