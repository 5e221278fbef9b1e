"""``okvqa``: OK-VQA (questions needing outside knowledge) on COCO images, the official files, VQAv2 format:
five annotators, each answer counted twice, so the standard VQA accuracy applies (the paper's Table 2).

Layout under ``root``::

    <root>/train2014/ val2014/                                   COCO images
    <root>/OpenEnded_mscoco_<split>_questions.json   <root>/mscoco_<split>_annotations.json
                                                                 (https://okvqa.allenai.org/download.html)
"""
from __future__ import annotations

from framework.core.registry import DATASETS
from plugins.datasets.vqav2 import CocoVQABuilder


@DATASETS.register("okvqa")
class OKVQA(CocoVQABuilder):
    """Args:
        root: the folder holding the COCO images and the OK-VQA files (layout: this module's docstring).
    """

    how_to_get = "OK-VQA questions and annotations: https://okvqa.allenai.org/download.html; COCO images"
    subsets = {"train": "train2014", "val": "val2014"}
    questions = "OpenEnded_mscoco_{subset}_questions.json"
    answers = "mscoco_{subset}_annotations.json"
