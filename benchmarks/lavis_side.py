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

from harness import _perturb, opt_model, patch, tiny_eva  # noqa: E402


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


def stage1_step(work: Path, spec: dict) -> dict:
    """LAVIS's stage-1 training step: ITC + ITM + ITG forward and backward (train mode; the BERT has no dropout)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{work / 'pg'}", rank=0, world_size=1)
    model = _stage1_model(spec).train()
    samples = {"image": spec["images"], "text_input": spec["texts"]}
    seconds, losses = [], []
    for _ in range(spec["repeats"]):
        torch.manual_seed(spec["sample_seed"])  # the ITM negatives
        start = time.perf_counter()
        out = model(samples)
        out.loss.backward()
        seconds.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        losses.append({"itc": float(out.loss_itc), "itm": float(out.loss_itm), "itg": float(out.loss_lm)})
    dist.destroy_process_group()
    return {"seconds": seconds, "losses": losses, "state_dict": model.state_dict()}


def opt(work: Path, spec: dict) -> dict:
    """LAVIS's Blip2OPT: the stage-2 LM step (forward and backward), captions (beam 5) and VQA answers (one image
    at a time with its question: 1.0.2's Blip2OPT has no batched ``predict_answers``), each timed."""
    model = opt_model(work, spec)
    images, c, v = spec["images"], spec["caption_decoding"], spec["vqa_decoding"]
    seconds = {"lm_step": [], "caption": [], "vqa": []}
    for _ in range(spec["repeats"]):
        model.train()
        start = time.perf_counter()
        loss = model({"image": images, "text_input": spec["captions"]})["loss"]
        loss.backward()
        seconds["lm_step"].append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            captions = model.generate({"image": images, "prompt": c["prompt"]}, num_beams=c["num_beams"],
                                      max_length=c["max_length"], min_length=c["min_length"])
            seconds["caption"].append(time.perf_counter() - start)
            start = time.perf_counter()
            answers = [model.generate({"image": images[i:i + 1], "prompt": v["prompt"].format(q)},
                                      num_beams=v["num_beams"], max_length=v["max_length"],
                                      min_length=v["min_length"], length_penalty=v["length_penalty"])[0]
                       for i, q in enumerate(spec["questions"])]
            seconds["vqa"].append(time.perf_counter() - start)
    state = {k: t for k, t in model.state_dict().items() if not k.startswith("opt_model.")}
    return {"seconds": seconds, "loss": float(loss), "captions": captions, "answers": answers, "state_dict": state}


JOBS = {"retrieval": retrieval, "stage1_step": stage1_step, "opt": opt}

if __name__ == "__main__":
    job, work = sys.argv[1], Path(sys.argv[2])
    spec = torch.load(work / "spec.pt", weights_only=False)
    torch.set_num_threads(spec["threads"])
    torch.save(JOBS[job](work, spec), work / "out.pt")
    print(f"{job}: done", flush=True)
