"""LAVIS's side of ``benchmarks/vs_lavis.py``: run inside ``.venv-lavis`` (LAVIS 1.0.2), never imported by our code.

    .venv-lavis/bin/python benchmarks/lavis_side.py JOB WORK

reads ``WORK/spec.pt``, builds LAVIS's own model from the folders in ``WORK`` (``bert-base-uncased/``) with the
oracle harness's patches (``tests/lavis/harness.py``: LAVIS's EVA class at the spec's sizes, fp32), runs LAVIS's
own code ``spec["repeats"]`` times with ``spec["threads"]`` torch threads, and writes ``WORK/out.pt``: the
seconds of each repeat, the model's ``state_dict()`` and the outputs to compare.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lavis"))

from harness import _perturb, patch, tiny_eva  # noqa: E402


def _stage1_model(spec: dict):
    import lavis.models.blip2_models.blip2 as blip2
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer

    blip2.create_eva_vit_g = tiny_eva(spec)
    patch("lavis.models.blip2_models.blip2.create_eva_vit_g -> LAVIS's VisionTransformer at the spec's sizes, "
          "random weights, fp32 (no download)")
    torch.manual_seed(spec["seed"])
    model = Blip2Qformer(vit_model="eva_clip_g", img_size=spec["vision"]["image_size"], vit_precision="fp32",
                         num_query_token=spec["num_query_tokens"], cross_attention_freq=spec["cross_attention_freq"],
                         embed_dim=spec["embed_dim"], max_txt_len=spec["max_txt_len"])
    _perturb(model, spec["seed"] + 1, spec["perturb"])
    return model


class _Split:
    """What ``compute_sim_matrix`` reads of a loader: batches of images and ``dataset.text`` / ``dataset.image``."""

    def __init__(self, images: torch.Tensor, texts: list, batch_size: int) -> None:
        self.batches = [{"image": images[i:i + batch_size]} for i in range(0, len(images), batch_size)]
        self.dataset = type("Dataset", (), {"text": texts, "image": list(range(len(images)))})()

    def __iter__(self):
        return iter(self.batches)


def retrieval(work: Path, spec: dict) -> dict:
    """LAVIS's ``compute_sim_matrix`` (ITC over all pairs, the top ``k_test`` re-ranked by ITM both ways)."""
    from lavis.models.blip2_models.blip2 import compute_sim_matrix

    model = _stage1_model(spec).eval()
    split = _Split(spec["images"], spec["texts"], spec["image_batch_size"])
    seconds, out = [], None
    with torch.no_grad():
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            out = compute_sim_matrix(model, split, k_test=spec["k_test"])
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "state_dict": model.state_dict(), "i2t": torch.as_tensor(out[0]),
            "t2i": torch.as_tensor(out[1])}


JOBS = {"retrieval": retrieval}

if __name__ == "__main__":
    job, work = sys.argv[1], Path(sys.argv[2])
    spec = torch.load(work / "spec.pt", weights_only=False)
    torch.set_num_threads(spec["threads"])
    torch.save(JOBS[job](work, spec), work / "out.pt")
    print(f"{job}: done", flush=True)
