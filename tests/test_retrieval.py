"""Retrieval metrics on constructed similarities, with hand-computed recalls and chance levels."""
from __future__ import annotations

import pytest
import torch

from plugins.tasks.retrieval import chance_recall, retrieval_metrics


def test_recall_at_k_on_known_similarities() -> None:
    # 3 images, 2 texts each: image i owns texts 2i and 2i+1
    img2txt = [[0, 1], [2, 3], [4, 5]]
    txt2img = [0, 0, 1, 1, 2, 2]
    sims = torch.tensor([
        [0.90, 0.10, 0.20, 0.30, 0.05, 0.06],
        [0.80, 0.15, 0.25, 0.70, 0.04, 0.07],
        [0.85, 0.50, 0.60, 0.65, 0.55, 0.45],
    ])
    # image -> text: image 0 ranks its text 0 first; image 1 ranks text 3 second (after text 0);
    # image 2's texts (4: 0.55, 5: 0.45) come 4th and 6th
    # text -> image (columns): t0 -> img0 first; t1 -> img2, img1, img0: 3rd; t2 -> img2, img1: 2nd;
    # t3 -> img1 first; t4 -> img2 first; t5 -> img2 first
    m = retrieval_metrics(sims, img2txt, txt2img, ks=(1, 2, 5))
    assert (m["txt_r1"], m["txt_r2"], m["txt_r5"]) == pytest.approx((100 / 3, 200 / 3, 100.0))
    assert (m["img_r1"], m["img_r2"], m["img_r5"]) == pytest.approx((400 / 6, 500 / 6, 100.0))
    assert m["r_mean"] == pytest.approx((100 / 3 + 200 / 3 + 100 + 400 / 6 + 500 / 6 + 100) / 6)
    assert m["chance_img_r1"] == pytest.approx(100 / 3) and m["chance_txt_r1"] == pytest.approx(100 / 3)


def test_chance_levels() -> None:
    assert chance_recall(200, [1] * 50, 1) == pytest.approx(0.5)
    assert chance_recall(1000, [5] * 10, 1) == pytest.approx(0.5)
    assert chance_recall(10, [2], 9) == pytest.approx(100.0)  # 8 negatives cannot fill 9 places
    assert chance_recall(4, [1], 2) == pytest.approx(50.0)
