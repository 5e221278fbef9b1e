"""LAVIS's side of the oracle: run inside ``.venv-lavis`` (LAVIS 1.0.2, transformers 4.33.3) by
``tests/lavis_oracle.py``, never imported by our code.

    .venv-lavis/bin/python tests/lavis/harness.py stage1 WORK

reads ``WORK/spec.pt`` (sizes, seed, inputs), builds LAVIS's own model at tiny sizes from the local folders in
``WORK`` (``bert-base-uncased/``: the tiny BERT, which LAVIS loads by that Hub name, so the folder is found
relative to the working directory), runs it, and writes ``WORK/out.pt``: its real ``state_dict()``, the losses,
the gradients and whatever the comparison needs. Every change made to LAVIS for this is printed ("patch: ...").
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def patch(what: str) -> None:
    print(f"patch: {what}", flush=True)


def tiny_eva(spec: dict):
    """LAVIS's own EVA ViT class at the spec's sizes, randomly initialised, fp32 (``create_eva_vit_g`` downloads
    the 1B-parameter weights and casts to fp16, which CPU matmuls reject)."""
    from lavis.models.eva_vit import VisionTransformer

    v = spec["vision"]

    def create(img_size=224, drop_path_rate=0.4, use_checkpoint=False, precision="fp16"):
        return VisionTransformer(img_size=img_size, patch_size=v["patch_size"], use_mean_pooling=False,
                                 embed_dim=v["width"], depth=v["depth"], num_heads=v["heads"],
                                 mlp_ratio=v["mlp_dim"] / v["width"], qkv_bias=True, drop_path_rate=drop_path_rate,
                                 norm_layer=partial(nn.LayerNorm, eps=1e-6), use_checkpoint=use_checkpoint)

    return create


def stage1(work: Path, spec: dict) -> dict:
    import lavis.models.blip2_models.blip2 as blip2
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer

    blip2.create_eva_vit_g = tiny_eva(spec)
    patch("lavis.models.blip2_models.blip2.create_eva_vit_g -> LAVIS's VisionTransformer at the test's sizes, "
          "random weights, fp32 (no download)")
    # LAVIS's stage 1 calls dist.get_rank(): it runs only inside a process group (one process here)
    dist.init_process_group("gloo", init_method=f"file://{work / 'pg'}", rank=0, world_size=1)
    torch.manual_seed(spec["seed"])
    model = Blip2Qformer(vit_model="eva_clip_g", img_size=spec["vision"]["image_size"], vit_precision="fp32",
                         num_query_token=spec["num_query_tokens"], cross_attention_freq=spec["cross_attention_freq"],
                         embed_dim=spec["embed_dim"], max_txt_len=spec["max_txt_len"])
    with torch.no_grad():  # no zero biases or unit norms: every weight must land in the right place
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * spec["perturb"])
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    drawn, multinomial = [], torch.multinomial

    def recording(weights, n, *args, **kwargs):  # the ITM negatives LAVIS draws, in order
        out = multinomial(weights, n, *args, **kwargs)
        drawn.append(int(out))
        return out

    torch.multinomial = recording
    patch("torch.multinomial wrapped to record the ITM negatives LAVIS draws (values unchanged)")
    torch.manual_seed(spec["sample_seed"])
    out = model({"image": spec["images"], "text_input": spec["texts"]})
    torch.multinomial = multinomial
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    dist.destroy_process_group()
    return {"state_dict": state, "loss_itc": out.loss_itc.detach(), "loss_itm": out.loss_itm.detach(),
            "loss_lm": out.loss_lm.detach(), "grads": grads, "negatives": drawn,
            "input_ids": model.tokenizer(spec["texts"], padding="max_length", truncation=True,
                                         max_length=spec["max_txt_len"], return_tensors="pt").input_ids}


def _perturb(model: nn.Module, seed: int, scale: float) -> None:
    """No zero biases or unit norms among the trained weights: each must land in the right place on our side."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _stage2(cls, spec: dict, **llm: str):
    """LAVIS's stage-2 model ``cls`` at the spec's sizes, its EVA the tiny one, seeded; ``llm``: its LLM folder."""
    import lavis.models.blip2_models.blip2 as blip2

    blip2.create_eva_vit_g = tiny_eva(spec)
    patch("lavis.models.blip2_models.blip2.create_eva_vit_g -> LAVIS's VisionTransformer at the test's sizes, "
          "random weights, fp32 (no download)")
    torch.manual_seed(spec["seed"])
    return cls(vit_model="eva_clip_g", img_size=spec["vision"]["image_size"], vit_precision="fp32",
               num_query_token=spec["num_query_tokens"], max_txt_len=spec["max_txt_len"], **llm)


def opt_model(work: Path, spec: dict):
    """LAVIS's Blip2OPT over the OPT in ``work/opt``, patched to run on a CPU with transformers >= 4.27, its trained
    weights perturbed."""
    from lavis.models.blip2_models.blip2_opt import Blip2OPT

    model = _stage2(Blip2OPT, spec, opt_model=str(work / "opt"))
    model.opt_model.float()
    patch("opt_model.float(): LAVIS loads OPT in fp16, which CPU matmuls reject; the test's OPT holds exact fp16 "
          "values, so no number changes")
    generate = model.opt_model.generate

    def generate_once(*args, query_embeds=None, num_beams=1, **kwargs):
        return generate(*args, query_embeds=query_embeds[::num_beams], num_beams=num_beams, **kwargs)

    model.opt_model.generate = generate_once
    patch("opt_model.generate: the visual prompt repeated once per beam, not twice (LAVIS 1.0.2 repeats it and "
          "transformers >= 4.27 repeats it again: a size error)")
    _perturb(model, spec["seed"] + 1, spec["perturb"])
    return model


def opt(work: Path, spec: dict) -> dict:
    """Blip2OPT: the LM loss (train mode) for each prompt in ``spec["losses"]`` (LAVIS's caption processor puts
    the prompt before the caption; the model masks the prompt's tokens), captions (``generate`` with the caption
    settings) and VQA answers (``generate`` one image at a time with its question in the prompt: 1.0.2's
    Blip2OPT has no ``predict_answers``)."""
    model = opt_model(work, spec)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("opt_model.")}
    images = spec["images"]
    losses = {}
    model.train()
    with torch.no_grad():
        q = model.Qformer.bert(query_embeds=model.query_tokens.expand(len(images), -1, -1),
                               encoder_hidden_states=model.ln_vision(model.visual_encoder(images)), return_dict=True)
        prefix = model.opt_proj(q.last_hidden_state)  # the soft visual prompt, compared on its own
    for prompt in spec["losses"]:
        model.prompt = prompt  # what __init__ sets from its prompt argument
        model.prompt_length = model.opt_tokenizer(prompt, return_tensors="pt").attention_mask.sum(1)
        text = [f"{prompt} {c}" if prompt else c for c in spec["captions"]]  # LAVIS's caption processor
        losses[prompt] = model({"image": images, "text_input": text})["loss"].detach()
    model.eval()
    c = spec["caption_decoding"]
    captions = model.generate({"image": images, "prompt": c["prompt"]}, num_beams=c["num_beams"],
                              max_length=c["max_length"], min_length=c["min_length"])
    v = spec["vqa_decoding"]
    answers = [model.generate({"image": images[i:i + 1], "prompt": v["prompt"].format(q)}, num_beams=v["num_beams"],
                              max_length=v["max_length"], min_length=v["min_length"],
                              length_penalty=v["length_penalty"])[0]
               for i, q in enumerate(spec["questions"])]
    return {"state_dict": state, "losses": losses, "captions": captions, "answers": answers, "prefix": prefix}


def _reseed(seed: int, module: nn.Module, args: tuple) -> None:
    torch.manual_seed(seed)  # a forward pre-hook: returns None, so the layer's inputs stay as they are


def opt_step(work: Path, spec: dict) -> dict:
    """Blip2OPT's training step as LAVIS's runner takes it: ``model.train()``, then the loss of ``spec["batch"]``
    (images, captions, prompt) with the frozen OPT's dropout active, and the same loss with the OPT in eval mode
    (so a comparison can tell the two apart). Without a batch: the state_dict only (our side converts it first)."""
    model = opt_model(work, spec)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("opt_model.")}
    if "batch" not in spec:
        return {"state_dict": state}
    for i, layer in enumerate(model.opt_model.model.decoder.layers):
        layer.register_forward_pre_hook(partial(_reseed, spec["layer_seed"] + i))
    patch("each OPT decoder layer re-seeded on entry (the test's side does the same): transformers 4.33 draws an "
          "unused random number per layer for LayerDrop, later versions none, so the dropout masks line up only "
          "per layer")
    batch = spec["batch"]
    model.prompt = batch["prompt"]
    model.prompt_length = model.opt_tokenizer(batch["prompt"], return_tensors="pt").attention_mask.sum(1)
    samples = {"image": batch["image"],
               "text_input": [f"{batch['prompt']} {c}" if batch["prompt"] else c for c in batch["text_input"]]}
    model.train()  # what LAVIS's runner calls before each training epoch
    loss_train = model(samples)["loss"].detach()
    model.opt_model.eval()
    loss_llm_eval = model(samples)["loss"].detach()
    return {"state_dict": state, "loss_train": loss_train, "loss_llm_eval": loss_llm_eval}


def t5(work: Path, spec: dict) -> dict:
    """Blip2T5: the LM loss (train mode; encoder text ``text_input``, decoder target ``text_output``), captions
    (``generate``) and VQA answers (``predict_answers``, LAVIS's own settings)."""
    from lavis.models.blip2_models.blip2_t5 import Blip2T5

    model = _stage2(Blip2T5, spec, t5_model=str(work / "t5"))
    model.t5_model.float()
    patch("t5_model.float(): LAVIS casts FlanT5 to bf16, which CPU matmuls against fp32 inputs reject; the test's "
          "T5 holds exact bf16 values, so no number changes")
    _perturb(model, spec["seed"] + 1, spec["perturb"])
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("t5_model.")}
    images = spec["images"]
    model.train()
    loss = model({"image": images, "text_input": spec["prompts"], "text_output": spec["targets"]})["loss"].detach()
    model.eval()
    c = spec["caption_decoding"]
    captions = model.generate({"image": images, "prompt": c["prompt"]}, num_beams=c["num_beams"],
                              max_length=c["max_length"], min_length=c["min_length"])
    v = spec["vqa_decoding"]
    answers = model.predict_answers({"image": images, "text_input": spec["questions"]}, prompt=v["prompt"],
                                    num_beams=v["num_beams"], max_len=v["max_length"], min_len=v["min_length"],
                                    length_penalty=v["length_penalty"])
    return {"state_dict": state, "loss": loss, "captions": captions, "answers": answers,
            "dense_act_fn": model.t5_model.config.dense_act_fn}


INSTRUCT = Path(__file__).parent / "instruct"  # LAVIS's InstructBLIP files (instruct/README.md: not in 1.0.2)


def _load_instruct(name: str):
    """``lavis.models.blip2_models.<name>`` from LAVIS's repository (instruct/), loaded into 1.0.2's package."""
    import importlib.util

    import lavis.models.blip2_models.blip2 as blip2
    from transformers import BertTokenizer

    if "truncation_side" not in blip2.Blip2Base.init_tokenizer.__func__.__code__.co_varnames:
        def init_tokenizer(cls, truncation_side="right"):  # LAVIS's repository's own, which 1.0.2 lacks
            tokenizer = BertTokenizer.from_pretrained("bert-base-uncased", truncation_side=truncation_side)
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
            return tokenizer

        blip2.Blip2Base.init_tokenizer = classmethod(init_tokenizer)
        patch("Blip2Base.init_tokenizer(truncation_side) as LAVIS's repository has it (1.0.2 has no argument)")
    module_name = f"lavis.models.blip2_models.{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, INSTRUCT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        patch(f"{module_name} loaded from LAVIS's repository at 506965b (tests/lavis/instruct/)")
    return sys.modules[module_name]


def _instruct_model(module: str, cls: str, spec: dict, llm: str, why_float: str, **llm_args: str):
    """LAVIS's InstructBLIP class ``cls`` of ``module`` (tests/lavis/instruct/) at the spec's sizes, its LLM (the
    attribute ``llm``) cast back to fp32, its trained weights perturbed."""
    model = _stage2(getattr(_load_instruct(module), cls), spec, max_output_txt_len=spec["max_output_txt_len"],
                    **llm_args)
    getattr(model, llm).float()
    patch(f"{llm}.float(): {why_float}, so no number changes")
    _perturb(model, spec["seed"] + 1, spec["perturb"])
    return model


def _instruct_outputs(model, spec: dict, llm_prefix: str) -> dict:
    """An InstructBLIP model's state_dict (its LLM left out), the LM loss (train mode) of instructions and outputs,
    texts generated with each decoding setting (sampling seeded), and the candidates ranked by ``predict_class``
    with ``n_segments``, with the losses it ranked them by."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(llm_prefix)}
    images = spec["images"]
    model.train()
    loss = model({"image": images, "text_input": spec["instructions"], "text_output": spec["outputs"]})["loss"]
    model.eval()
    generated = {}
    for name, decoding in spec["decodings"].items():
        torch.manual_seed(spec["sample_seed"])
        generated[name] = model.generate({"image": images, "prompt": spec["instructions"]}, **decoding)
    scores, argsort = [], torch.argsort

    def recording(losses, *args, **kwargs):  # predict_class's per-candidate losses, before it sorts them
        scores.append(losses.detach().clone())
        return argsort(losses, *args, **kwargs)

    torch.argsort = recording
    patch("torch.argsort wrapped to record the candidate losses predict_class sorts (values unchanged)")
    ranks = model.predict_class({"image": images, "prompt": spec["rank_prompt"], "text_input": spec["questions"]},
                                spec["candidates"], n_segments=spec["n_segments"])
    torch.argsort = argsort
    return {"state_dict": state, "loss": loss.detach(), "generated": generated, "ranks": ranks, "scores": scores[0]}


def vicuna(work: Path, spec: dict) -> dict:
    """Blip2VicunaInstruct over the Vicuna in ``work/vicuna`` (:func:`_instruct_outputs`), and the LLM's vocabulary
    once LAVIS has added its tokens."""
    _load_instruct("modeling_llama")
    model = _instruct_model("blip2_vicuna_instruct", "Blip2VicunaInstruct", spec, "llm_model",
                            "LAVIS loads Vicuna in fp16, which CPU matmuls reject; the test's Vicuna holds exact fp16 "
                            "values", llm_model=str(work / "vicuna"))
    return _instruct_outputs(model, spec, "llm_model.") | {
        "llm_vocab": model.llm_model.get_input_embeddings().weight.shape[0]}


def t5_instruct(work: Path, spec: dict) -> dict:
    """Blip2T5Instruct over the T5 in ``work/t5`` (:func:`_instruct_outputs`), and its training loss with few-shot
    examples (``few_shot_samples``) before each sample, the number of examples LAVIS draws fixed by the spec."""
    import random

    model = _instruct_model("blip2_t5_instruct", "Blip2T5Instruct", spec, "t5_model",
                            "LAVIS casts FlanT5 to bf16, which CPU matmuls against fp32 inputs reject; the test's T5 "
                            "holds exact bf16 values", t5_model=str(work / "t5"))
    out = _instruct_outputs(model, spec, "t5_model.")
    fs = spec["few_shot"]
    model.num_few_shot_examples, model.few_shot_prob = fs["num_few_shot_examples"], fs["few_shot_prob"]
    choices = random.choices
    random.choices = lambda population, weights: [fs["k"]]
    patch(f"random.choices returns {fs['k']}: the number of few-shot examples the test compares at")
    model.train()
    samples = [{"image": images, "text_input": texts} for images, texts in zip(fs["images"], fs["texts"])]
    out["few_shot_loss"] = model({"image": spec["images"], "text_input": spec["instructions"],
                                  "text_output": spec["outputs"], "few_shot_samples": samples})["loss"].detach()
    random.choices = choices
    return out


JOBS = {"stage1": stage1, "opt": opt, "opt_step": opt_step, "t5": t5, "vicuna": vicuna, "t5_instruct": t5_instruct}

if __name__ == "__main__":
    job, work = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    result = JOBS[job](work, torch.load(work / "spec.pt", weights_only=False))
    torch.save(result, work / "out.pt")
    print(f"{job}: done", flush=True)
