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


def test_itm_reranking_reorders_the_top_k_and_keeps_the_rest_in_itc_order() -> None:
    from plugins.tasks.retrieval import rerank_both

    sims = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])  # one image, five candidate texts in ITC order
    match = torch.tensor([0.0, 0.0, 5.0, 0.0, 9.0])  # ITM prefers text 2 (and 4, beyond the top 3)
    out, _ = rerank_both(sims, 3, lambda i, texts: match[texts], batch_size=2)
    # top 3 re-scored: 0.9, 0.8, 5.7 -> order 2, 0, 1; then 3, 4 in ITC order, below every re-scored one
    assert out[0].argsort(descending=True).tolist() == [2, 0, 1, 3, 4]
    assert out[0, 2] == pytest.approx(5.7) and out[0, 3] < out[0, 1]
    everything, _ = rerank_both(sims, 10, lambda i, texts: match[texts], batch_size=2)  # k beyond the candidates
    assert everything[0].argsort(descending=True).tolist() == [4, 2, 0, 1, 3]


def test_reranked_recall_on_a_constructed_case() -> None:
    from plugins.tasks.retrieval import rerank_both, rerank_metrics

    img2txt, txt2img = [[0], [1], [2]], [0, 1, 2]
    sims = torch.tensor([[0.5, 0.9, 0.1], [0.8, 0.4, 0.3], [0.2, 0.1, 0.6]])  # ITC gets only image 2 right
    truth = torch.eye(3) * 10  # ITM knows every true pair
    i2t, t2i = rerank_both(sims, 2, lambda i, texts: truth[i, texts], batch_size=8)
    m = rerank_metrics(i2t, t2i, img2txt, txt2img)
    # image->text: each image's true text is in its ITC top 2 -> all first. text->image: text 0's images by ITC
    # are 1 (0.8), 0 (0.5): re-ranked first; text 1: 0 (0.9), 1 (0.4): first; text 2: 2 (0.6), 1 (0.3): first
    assert m["txt_r1"] == pytest.approx(100.0) and m["img_r1"] == pytest.approx(100.0)
    itc = retrieval_metrics(sims, img2txt, txt2img)
    assert itc["txt_r1"] == pytest.approx(100 / 3) and itc["img_r1"] == pytest.approx(100 / 3)
    only_top1, _ = rerank_both(sims, 1, lambda i, texts: truth[i, texts], batch_size=8)  # true text not re-ranked
    assert rerank_metrics(only_top1, t2i, img2txt, txt2img)["txt_r1"] == pytest.approx(100 / 3)


def test_each_pair_is_scored_once_grouped_by_image() -> None:
    from plugins.tasks.retrieval import rerank_both

    g = torch.Generator().manual_seed(0)
    sims = torch.randn(6, 20, generator=g)
    calls = []
    rerank_both(sims, 4, lambda i, texts: calls.append((i, texts.tolist())) or torch.zeros(len(texts)),
                batch_size=3, text_length=torch.arange(20, 0, -1))
    pairs = [(i, t) for i, texts in calls for t in texts]
    wanted = {(i, t) for i in range(6) for t in sims[i].topk(4).indices.tolist()}
    wanted |= {(i, t) for t in range(20) for i in sims[:, t].topk(4).indices.tolist()}
    assert sorted(pairs) == sorted(wanted)  # both directions' pairs, each once
    assert all(len(texts) <= 3 for _, texts in calls)
    assert [i for i, _ in calls] == sorted(i for i, _ in calls)  # image by image
    for i in range(6):  # shortest text first (text t has length 20 - t)
        texts = [t for j, ts in calls if j == i for t in ts]
        assert texts == sorted(texts, reverse=True)


def test_grouped_reranking_ranks_exactly_as_scoring_every_pair_apart(tmp_path) -> None:
    """BLIP-2's re-ranking with each image's keys/values projected once against the per-pair computation LAVIS
    does (the image repeated once per text): the same scores within rounding, identical rankings."""
    from helpers import implementation_atol, stage1_config, write_yaml

    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model
    from plugins.tasks.retrieval import rerank_both

    cfg = stage1_config(tmp_path, tmp_path / "out")
    model = build_model(load_experiment(str(write_yaml(tmp_path / "c.yaml", cfg))).model).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation's near-ties
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        images = torch.randn(7, 3, 32, 32, generator=g)
        words = ["red", "blue", "circle", "square", "left", "right", "two", "a", "the", "shapes"]
        texts = [" ".join(words[int(w)] for w in torch.randint(0, 10, (int(n),), generator=g))
                 for n in torch.randint(1, 9, (23,), generator=g)]
        sims = model.similarity(model.image_features(images), model.text_features(texts))
        tokens = model.image_tokens(images)
        every_pair = torch.stack([model.match_scores(tokens[i:i + 1].expand(len(texts), -1, -1), texts)
                                  for i in range(7)])  # LAVIS: the image repeated, projected once per pair
        grouped = {}

        def score(i: int, batch: torch.Tensor) -> torch.Tensor:
            out = model.match_scores(tokens[i:i + 1], [texts[t] for t in batch])
            grouped.update({(i, int(t)): float(s) for t, s in zip(batch, out)})
            return out

        i2t, t2i = rerank_both(sims, 4, score, batch_size=5, text_length=torch.tensor([len(t) for t in texts]))
        ref_i2t, ref_t2i = rerank_both(sims, 4, lambda i, batch: every_pair[i, batch], batch_size=5)
    assert len(grouped) > 4 * 7  # the text->image pairs are scored too
    # fp32, a 2-layer Q-Former: the two differ only in GEMM shapes and padding (implementation_atol's bound)
    atol = implementation_atol(every_pair, layers=2)
    for (i, t), s in grouped.items():
        assert abs(s - float(every_pair[i, t])) <= atol, (i, t, s, float(every_pair[i, t]))
    assert torch.equal(i2t.argsort(1, descending=True), ref_i2t.argsort(1, descending=True))
    assert torch.equal(t2i.argsort(1, descending=True), ref_t2i.argsort(1, descending=True))


def test_chunked_similarities_equal_the_unchunked_ones() -> None:
    from plugins.tasks.retrieval import chunked_similarity

    class QueryMax:  # BLIP-2's similarity: the best of the image's query embeddings
        def similarity(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
            return torch.einsum("iqd,td->itq", image_feats, text_feats).amax(-1)

    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(50, 8, 16, generator=g), torch.randn(230, 16, generator=g)
    whole = QueryMax().similarity(images, texts)
    # a chunk is another GEMM shape, free to sum the 16 products in another order: the rounding error of a sum of
    # d products is at most d * eps * sum(|products|) (Higham's bound, with room to spare)
    bound = 16 * torch.finfo(torch.float32).eps * torch.einsum("iqd,td->itq", images.abs(), texts.abs()).amax()
    for chunk in (1, 7, 50, 64):
        torch.testing.assert_close(chunked_similarity(QueryMax(), images, texts, chunk), whole, rtol=0,
                                   atol=bound.item())
