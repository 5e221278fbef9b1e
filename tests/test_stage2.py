"""Stage-2 BLIP-2: the generative model over the LLM adapters, initialised from stage 1 or from BERT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import probe_config, stage1_config, stage2_config, toy_config, write_yaml

from framework.commands.train import main as train_main
from framework.core import checkpoint
from framework.core.config import to_plain
from framework.core.errors import CheckpointError, ConfigError
from framework.engine.experiment import load_experiment
from framework.models.build import build_model

IMAGES = torch.randn(2, 3, 32, 32)
BATCH = {"image": IMAGES, "text_input": ["a red circle", "two shapes"]}


def _spec(tmp_path: Path, llm: str = "opt", **over):
    cfg = stage2_config(tmp_path, tmp_path / "out", llm, **over)
    return load_experiment(str(write_yaml(tmp_path / "g.yaml", cfg))).model


@pytest.mark.parametrize("llm", ["opt", "flant5"])
def test_loss_trains_the_bridge_not_the_frozen_parts_and_generation_runs(tmp_path: Path, llm: str) -> None:
    model = build_model(_spec(tmp_path, llm))
    out = model(BATCH)
    out["loss"].backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"ln_vision", "qformer", "llm_proj"} and torch.isfinite(out["loss"])
    # every trainable parameter is used: the Q-Former's text path (embeddings, text FFNs, LM head) is removed
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.qformer.word_embeddings is None and model.qformer.lm_head is None
    texts = model.generate(IMAGES, num_beams=2, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    saved = checkpoint.trainable_state_dict(model)
    assert not any(k.startswith(("llm.", "image_encoder.")) for k in saved)  # frozen parts come from their source


@pytest.mark.parametrize("llm", ["opt", "flant5"])
@pytest.mark.parametrize("text_input", [False, True])
def test_batched_generation_equals_one_image_at_a_time(tmp_path: Path, llm: str, text_input: bool) -> None:
    model = build_model(_spec(tmp_path, llm, qformer_text_input=text_input)).eval()
    prompts = ["a photo of", "question : what color is the circle ? answer :"]  # different lengths: padding
    for beams in (1, 3):
        batched = model.generate(IMAGES, prompts, num_beams=beams, max_new_tokens=5)
        alone = [model.generate(IMAGES[i:i + 1], prompts[i:i + 1], num_beams=beams, max_new_tokens=5)[0]
                 for i in range(2)]
        assert batched == alone


def test_qformer_text_input_makes_the_visual_prompt_depend_on_the_prompt(tmp_path: Path) -> None:
    plain = build_model(_spec(tmp_path)).eval()
    a, b = plain.visual_prompt(IMAGES, ["a photo of"] * 2), plain.visual_prompt(IMAGES, ["what color is the circle"] * 2)
    assert torch.equal(a, b)
    aware = build_model(_spec(tmp_path, qformer_text_input=True)).eval()
    assert aware.qformer.word_embeddings is not None and aware.qformer.lm_head is None  # text in, no LM head
    a, b = aware.visual_prompt(IMAGES, ["a photo of"] * 2), aware.visual_prompt(IMAGES, ["what color is the circle"] * 2)
    assert not torch.allclose(a, b)


def test_stage1_checkpoint_or_bert_is_one_key(tmp_path: Path) -> None:
    cfg = stage1_config(tmp_path, tmp_path / "s1", max_iters=2)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "s1.yaml", cfg))]) == 0
    ckpt = tmp_path / "s1" / "checkpoints" / "last.pt"
    stage1 = checkpoint.load(ckpt)["model"]
    from_stage1 = build_model(_spec(tmp_path, stage1_checkpoint=str(ckpt)))
    from_bert = build_model(_spec(tmp_path))
    key = "qformer.layers.0.cross.kv.weight"  # new in BERT init, trained in stage 1
    assert torch.equal(from_stage1.state_dict()[key], stage1[key])
    assert not torch.equal(from_bert.state_dict()[key], stage1[key])
    assert torch.equal(from_stage1.state_dict()["ln_vision.weight"], stage1["ln_vision.weight"])


def test_a_stage1_checkpoint_without_qformer_weights_is_named(tmp_path: Path) -> None:
    assert train_main(["--cfg", str(write_yaml(tmp_path / "toy.yaml", toy_config(tmp_path / "toy", max_iters=1)))]) == 0
    with pytest.raises(ConfigError, match=r"holds no Q-Former weights \(no qformer.\* keys\)"):
        build_model(_spec(tmp_path, stage1_checkpoint=str(tmp_path / "toy" / "checkpoints" / "last.pt")))


def test_caption_metrics_on_known_captions() -> None:
    from plugins.tasks.captioning import caption_metrics

    refs = {1: ["a red circle on the left", "one shape: a red circle"], 2: ["a blue square and a green triangle"]}
    perfect = caption_metrics(refs, {1: "a red circle on the left", 2: "a blue square and a green triangle"})
    partial = caption_metrics(refs, {1: "a red circle", 2: "a blue square"})
    assert perfect["bleu4"] == pytest.approx(100.0, abs=1e-3) and perfect["rouge_l"] == pytest.approx(100.0)
    assert 0 < partial["bleu1"] < 100 and partial["cider"] < perfect["cider"]
    assert set(perfect) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}  # no SPICE number


@pytest.mark.slow
def test_captioning_run_writes_official_predictions_and_metrics(tmp_path: Path) -> None:
    import json

    cfg = stage1_config(tmp_path, tmp_path / "cap", max_iters=3)
    cfg["model"] = to_plain(_spec(tmp_path))
    cfg["task"] = {"name": "captioning", "num_beams": 2, "max_new_tokens": 5, "min_new_tokens": 1}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 20, "val": 6}
    cfg["datasets"]["shapes_caption"] = shapes
    cfg["run"]["batch_size"] = 4
    assert train_main(["--cfg", str(write_yaml(tmp_path / "cap.yaml", cfg))]) == 0
    preds = json.loads((tmp_path / "cap" / "predictions" / "shapes_caption_val_iter3.json").read_text())
    assert len(preds) == 6 and set(preds[0]) == {"image_id", "caption"}
    metrics = [json.loads(line) for line in (tmp_path / "cap" / "log.jsonl").read_text().splitlines()
               if '"eval"' in line][-1]
    assert {"shapes_caption/val/cider", "shapes_caption/val/bleu4", "shapes_caption/val/meteor"} <= set(metrics)
    assert "SPICE unavailable" in (tmp_path / "cap" / "train.log").read_text()


def test_vqa_normalisation_and_accuracy() -> None:
    from plugins.tasks.vqa import normalize_answer, vqa_accuracy

    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("the red one") == "red 1"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("t-shirt") == "t shirt" and normalize_answer("yes !") == "yes"
    assert normalize_answer("1,000") == "1000"
    # 3 of 10 annotators agree: leaving one of them out leaves 2 (2/3), leaving another out leaves 3 (1)
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("Red.", ["red"] * 4 + ["blue"] * 6) == pytest.approx(1.0)  # normalised: disagreement
    assert vqa_accuracy("two", ["2"] * 10) == 0.0  # unanimous annotators: no normalisation, as the official code
    assert vqa_accuracy("green", ["red"] * 10) == 0.0


def test_vqa_scores_per_answer_type_and_gqa_exact_match() -> None:
    from plugins.tasks.vqa import VQA

    results = [("yes", ["yes"] * 10, "yes/no"), ("no", ["yes"] * 10, "yes/no"), ("two", ["2"] * 5 + ["3"] * 5, "number"),
               ("red", ["red"] * 2 + ["blue"] * 8, "other")]
    scores = VQA().score(results)
    # "two" -> "2" (normalised: the annotators disagree), 5 matches: 1 on every leave-one-out subset
    assert scores["accuracy_yes/no"] == pytest.approx(50.0) and scores["accuracy_number"] == pytest.approx(100.0)
    assert scores["accuracy_other"] == pytest.approx(60.0)  # 2 of 10 agree: (2 * 1/3 + 8 * 2/3) / 10
    assert scores["accuracy"] == pytest.approx((1 + 0 + 1 + 0.6) / 4 * 100)  # over questions, not types
    gqa = VQA(prompt_template="Question: {} Short answer:", metric="exact").score([("The table.", ["table"], ""),
                                                                         ("chair", ["table"], "")])
    assert gqa == {"accuracy": 50.0}  # one answer, exact after normalisation; GQA has no answer types


@pytest.mark.slow
def test_zero_shot_vqa_run_writes_predictions_and_accuracy(tmp_path: Path) -> None:
    import json

    cfg = stage1_config(tmp_path, tmp_path / "vqa", max_iters=2)
    cfg["model"] = to_plain(_spec(tmp_path))
    cfg["task"] = {"name": "vqa", "num_beams": 2, "max_new_tokens": 3}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 20, "val": 6}
    shapes["processors"]["train"]["text"] = [{"name": "clean_question"}]
    cfg["datasets"]["shapes_vqa"] = shapes
    cfg["run"]["batch_size"] = 4
    assert train_main(["--cfg", str(write_yaml(tmp_path / "vqa.yaml", cfg))]) == 0
    files = list((tmp_path / "vqa" / "predictions").glob("shapes_vqa_val_iter2.json"))
    preds = json.loads(files[0].read_text())
    assert preds and set(preds[0]) == {"question_id", "answer"}
    ev = [json.loads(line) for line in (tmp_path / "vqa" / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert 0.0 <= ev[-1]["shapes_vqa/val/accuracy"] <= 100.0


def test_tiny_llms_train_a_few_steps_and_the_loss_falls(tmp_path: Path) -> None:
    for llm in ("opt", "flant5"):
        torch.manual_seed(0)
        model = build_model(_spec(tmp_path, llm))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for _ in range(15):
            loss = model(BATCH)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 0.05, (llm, losses)  # the frozen random LLM is moved by the prefix alone


def test_bad_task_input_is_named(tmp_path: Path) -> None:
    from plugins.tasks.captioning import Captioning
    from plugins.tasks.vqa import VQA

    with pytest.raises(ConfigError, match=r"task.prompt_template 'Question: Answer:' needs '\{\}' where the question goes"):
        VQA(prompt_template="Question: Answer:")
    stage1 = build_model(load_experiment(str(write_yaml(tmp_path / "s.yaml", stage1_config(tmp_path, tmp_path))))
                         .model)
    with pytest.raises(ConfigError, match=r"task Captioning needs a model with generate\(\).*Blip2QFormer has none"):
        Captioning().evaluate(stage1, [])


def test_fine_tuning_the_encoder_from_a_checkpoint_that_froze_it(tmp_path: Path) -> None:
    """The paper's caption fine-tuning trains the ViT from a stage-2 checkpoint that holds none of it."""
    stage2 = build_model(_spec(tmp_path))
    weights = checkpoint.trainable_state_dict(stage2)
    spec = to_plain(_spec(tmp_path))
    spec["image_encoder"]["freeze"] = False
    cfg = stage1_config(tmp_path, tmp_path / "ft")
    cfg["model"] = spec
    finetune = build_model(load_experiment(str(write_yaml(tmp_path / "ft.yaml", cfg))).model)
    before = {k: v.clone() for k, v in finetune.state_dict().items() if k.startswith("image_encoder.")}
    with pytest.raises(CheckpointError, match=r"trainable keys the checkpoint lacks: image_encoder"):
        checkpoint.load_model_weights(finetune, {"model": weights}, "unknown.pt")  # not known to be frozen there
    checkpoint.load_model_weights(finetune, {"model": weights, "frozen": checkpoint.frozen_prefixes(stage2)},
                                  "stage2.pt")
    after = finetune.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # kept as built
    assert torch.equal(after["llm_proj.weight"], weights["llm_proj.weight"])
    partial = {k: v for k, v in weights.items() if not k.startswith("llm_proj.")}
    del partial["qformer.layers.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"trainable keys the checkpoint lacks: "
                                                          r"qformer.layers.0.attn.qkv.weight"):
        checkpoint.load_model_weights(finetune, {"model": partial, "frozen": ["image_encoder"]}, "stage2.pt")


def test_captioning_reports_cider_per_nocaps_domain() -> None:
    from plugins.tasks.captioning import Captioning

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, images, prompts, **decoding):
            return ["a red circle", "a blue square", "a green triangle"][:len(images)]

    batch = {"image": torch.zeros(3, 3, 4, 4), "image_id": torch.tensor([1, 2, 3]),
             "captions": [["a red circle"], ["a blue square"], ["two yellow stars"]],
             "domain": ["in-domain", "in-domain", "out-domain"]}
    metrics = Captioning().evaluate(Fixed(), [batch])
    assert metrics["cider_out-domain"] == pytest.approx(0.0) and metrics["cider_in-domain"] > 0
    assert "cider_near-domain" not in metrics  # only the domains present


def test_prefix_lm_splits_each_caption_between_input_and_target(tmp_path: Path) -> None:
    """The paper's prefix language modelling (FlanT5): the prefix follows the prompt into the input, the suffix is
    the target, split at a random word; off (LAVIS 1.0.2) the whole caption is the target."""
    from plugins.models.blip2_generative import split_for_prefix_lm

    torch.manual_seed(0)
    prompts, targets = split_for_prefix_lm(["", "a photo of"], ["a red circle on the left", "circle"])
    assert targets[1] == "circle" and prompts[1] == "a photo of"  # one word: nothing to split
    words = "a red circle on the left".split()
    k = len(prompts[0].split())
    assert 1 <= k < len(words) and prompts[0].split() + targets[0].split() == words
    cfg = stage2_config(tmp_path, tmp_path / "out", "flant5", prefix_lm=True)
    model = build_model(load_experiment(str(write_yaml(tmp_path / "s2.yaml", cfg))).model).train()
    seen = []
    model.llm.lm_loss = lambda prefix, p, t: seen.append((p, t)) or prefix.sum() * 0
    model({"image": torch.randn(2, 3, 32, 32), "text_input": ["a red circle on the left", "two shapes"],
           "prompt": ["", ""]})
    (p, t), = seen
    assert [a.split() + b.split() for a, b in zip(p, t)] == [words, ["two", "shapes"]] and all(t)


def test_vqa_without_public_answers_writes_predictions_and_no_accuracy() -> None:
    from plugins.tasks.vqa import VQA

    assert VQA().score([("red", [], ""), ("two", [], "")]) == {"questions": 2.0}  # VQAv2 test-dev
    mixed = VQA(metric="exact").score([("red", ["red"], ""), ("two", [], "")])
    assert mixed["accuracy"] == 100.0  # the answered question is scored, the other counted in the log


def test_okvqa_answers_are_lemmatised_as_lavis_evaluates_them() -> None:
    from plugins.tasks.vqa import VQA, lemmatize

    assert [lemmatize(a) for a in ("dogs", "skiing", "two buses", "it is wood", "")] == \
        ["dog", "ski", "two bus", "it is wood", ""]
    assert VQA(lemmatize=True).lemmatize and not VQA().lemmatize


@pytest.mark.parametrize("frozen_dropout", [True, False])
def test_a_real_run_keeps_the_frozen_llm_dropout_as_frozen_dropout_says(tmp_path: Path, frozen_dropout: bool) -> None:
    """Through ``framework.train``: every step, before and after an evaluation and after a resume, the frozen LLM
    is in training mode (dropout active, as LAVIS) with ``frozen_dropout: true`` and in eval mode with false; the
    frozen image encoder is in eval mode either way (its drop path 0.5 would make the second pass differ)."""
    from helpers import read_log

    out = tmp_path / "run"  # evaluations after steps 2 and 4; steps 3 and 4 follow one and the resume
    assert train_main(["--cfg", str(probe_config(tmp_path, out, frozen_dropout, max_iters=2, eval_every=2))]) == 0
    longer = probe_config(tmp_path, out, frozen_dropout, max_iters=4, eval_every=2)
    assert train_main(["--cfg", str(longer), "--resume", "auto"]) == 0
    log = read_log(out)
    assert [r["iter"] for r in log] == [1, 2, 3, 4]
    assert [r["second_pass_differs"] for r in log] == [float(frozen_dropout)] * 4


def test_a_compiled_run_keeps_the_frozen_llm_dropout(tmp_path: Path) -> None:
    from helpers import read_log

    cfg = probe_config(tmp_path, tmp_path / "run", True, max_iters=2, compile=True, compile_backend="eager",
                       eval_splits=[])
    assert train_main(["--cfg", str(cfg)]) == 0
    assert [r["second_pass_differs"] for r in read_log(tmp_path / "run")] == [1.0, 1.0]


def test_a_real_run_keeps_frozen_parts_in_their_precision_under_autocast(tmp_path: Path, monkeypatch) -> None:
    """LAVIS stores the frozen ViT and LLM in half precision and trains the Q-Former, ``ln_vision`` and the
    projection in fp32 under autocast. Through ``framework.train`` with ``run.amp: bf16`` and bf16 frozen parts:
    the frozen weights stay bf16 (nothing in the runner casts the model), the trained ones fp32, and the LLM runs
    under autocast."""
    import framework.engine.runner

    models, seen = [], {}
    build = framework.engine.runner.build_model

    def note_autocast(module: torch.nn.Module, args: tuple) -> None:
        seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))

    def build_and_keep(spec):
        model = build(spec)
        models.append(model)
        model.llm.model.register_forward_pre_hook(note_autocast)
        return model

    monkeypatch.setattr(framework.engine.runner, "build_model", build_and_keep)
    cfg = stage1_config(tmp_path, tmp_path / "run", max_iters=2, amp="bf16", eval_splits=[])
    cfg["model"] = stage2_config(tmp_path, tmp_path / "run")["model"]
    cfg["model"]["image_encoder"]["precision"] = "bf16"
    cfg["model"]["llm"]["precision"] = "bf16"
    cfg["task"] = {"name": "captioning"}
    shapes = cfg["datasets"].pop("shapes_retrieval")
    shapes["num_images"] = {"train": 16}
    cfg["datasets"]["shapes_caption"] = shapes
    cfg["run"]["batch_size"] = 8
    assert train_main(["--cfg", str(write_yaml(tmp_path / "amp.yaml", cfg))]) == 0
    (model,) = models
    dtypes = {name: {p.dtype for p in part.parameters()} for name, part in model.named_children()}
    assert dtypes == {"image_encoder": {torch.bfloat16}, "llm": {torch.bfloat16}, "ln_vision": {torch.float32},
                      "qformer": {torch.float32}, "llm_proj": {torch.float32}}
    assert seen["autocast"] is True
