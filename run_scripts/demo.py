"""``make demo``: train the CPU-sized models on the generated shapes set and print their metrics.

1. the unimodal image encoder: a tiny ViT learns what is in each column of the shapes images, then is frozen;
2. stage 1: the Q-Former, from MiniLM's BERT weights (its vocabulary cut to the shapes text's tokens by
   run_scripts/bert_vocab.py), learns ITC + ITM + ITG from the frozen encoder;
3. retrieval as the paper evaluates it: the stage-1 model's ITC similarities re-ranked by ITM;
4. a no-Q-Former baseline: a small dual encoder trained with ITC alone;
5. the frozen LLM: a tiny OPT trained on the shapes text (run_scripts/tiny_llm.py);
6. stage 2: the stage-1 Q-Former learns to prompt the frozen LLM with the image (captions only);
7. zero-shot VQA: the stage-2 model answers questions it never trained on.

Each step is an ordinary ``python -m framework.train`` / ``framework.evaluate`` run; rerunning the demo
resumes finished runs from their last checkpoint instead of training again.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from framework.commands.evaluate import main as evaluate_main
from framework.commands.train import main as train_main
from framework.engine.experiment import load_experiment
from framework.engine.experiment_data import builders
from run_scripts.bert_vocab import main as bert_vocab_main
from run_scripts.tiny_llm import main as tiny_llm_main

STAGE2 = "projects/blip2/demo/stage2_shapes.yaml"
VQA = "projects/blip2/demo/vqa_zeroshot_shapes.yaml"
RERANK = "projects/blip2/demo/retrieval_shapes.yaml"
STAGE1 = "projects/blip2/demo/stage1_shapes.yaml"
STEPS: List[Tuple[str, str, Callable[[List[str]], int]]] = [
    ("frozen image encoder: tiny ViT pretrained on the shapes' attributes", "projects/blip2/demo/vit_shapes.yaml",
     train_main),
    ("the Q-Former's text: MiniLM with its vocabulary cut to the shapes text's tokens", STAGE1, bert_vocab_main),
    ("stage 1: Q-Former (MiniLM init) with ITC + ITM + ITG", STAGE1, train_main),
    ("retrieval with the stage-1 model: ITC, top 16 re-ranked by ITM", RERANK, evaluate_main),
    ("baseline: conv encoder + bag-of-words dual encoder, ITC only", "projects/blip2/demo/dual_encoder_shapes.yaml",
     train_main),
    ("frozen LLM: tiny OPT trained on the shapes text", STAGE2, tiny_llm_main),
    ("stage 2: stage-1 Q-Former -> frozen tiny OPT, LM loss on captions", STAGE2, train_main),
    ("zero-shot VQA with the stage-2 model", VQA, evaluate_main),
]
RETRIEVAL = [("txt_r1", "image->text R@1"), ("txt_r5", "image->text R@5"), ("img_r1", "text->image R@1"),
             ("img_r5", "text->image R@5")]


def last_validation(out: Path) -> Dict[str, float]:
    """The metrics of the run's last evaluation of its validation split."""
    log = out / "log.jsonl"
    evals = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line] if log.exists() else []
    evals = [e for e in evals if any("/val/" in k for k in e)]
    return {k.split("/")[-1]: v for k, v in evals[-1].items() if "/val/" in k} if evals else {}


def command(step: Callable, cfg: str) -> List[str]:
    if step in (bert_vocab_main, tiny_llm_main):  # they keep what they built
        return ["--cfg", cfg]
    # a rerun continues the training runs and replaces the evaluations
    return ["--cfg", cfg] + (["--resume", "auto"] if step is train_main else ["--overwrite"])


def reranked(out: Path) -> Dict[str, float]:
    """An evaluation run's validation metrics (``metrics.json``)."""
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    return {k.split("/")[-1]: v for k, v in metrics.items() if "/val/" in k}


def print_retrieval(title: str, metrics: Dict[str, float]) -> None:
    itc = "itc_txt_r1" in metrics
    print(f"\n{title}\n  {'validation':22s} {'value':>7s} {'chance':>7s}" + (f" {'ITC only':>9s}" if itc else ""))
    for key, name in RETRIEVAL:
        print(f"  {name:22s} {metrics[key]:7.2f} {metrics['chance_' + key]:7.2f}"
              + (f" {metrics['itc_' + key]:9.2f}" if itc else ""))


def blind_accuracy(root: Path) -> float:
    """VQA accuracy of always giving the most frequent training answer of the question's type (its first three
    words): what the question alone tells, without the image."""
    ann = root / "annotations"
    common: Dict[str, Counter] = defaultdict(Counter)
    for a in json.loads((ann / "vqa_annotations_train.json").read_text())["annotations"]:
        common[a["question_type"]][a["multiple_choice_answer"]] += 1
    val = json.loads((ann / "vqa_annotations_val.json").read_text())["annotations"]
    hits = [common[a["question_type"]].most_common(1)[0][0] == a["multiple_choice_answer"] for a in val]
    return 100.0 * sum(hits) / len(hits)


def print_examples(root: Path, caption_file: Path, answer_file: Path, n: int = 3) -> None:
    """The first ``n`` validation images with the generated caption and answers beside the truth."""
    ann = root / "annotations"
    captions = {p["image_id"]: p["caption"] for p in json.loads(caption_file.read_text())}
    answers = {p["question_id"]: p["answer"] for p in json.loads(answer_file.read_text())}
    images = json.loads((ann / "captions_val.json").read_text())
    refs = defaultdict(list)
    for a in images["annotations"]:
        refs[a["image_id"]].append(a["caption"])
    questions = json.loads((ann / "vqa_questions_val.json").read_text())["questions"]
    truth = {a["question_id"]: a["multiple_choice_answer"]
             for a in json.loads((ann / "vqa_annotations_val.json").read_text())["annotations"]}
    for image in images["images"][:n]:
        i = image["id"]
        print(f"\n  {root / 'images' / image['file_name']}\n    caption:   {captions[i]!r}\n"
              f"    reference: {refs[i][3]!r}")
        for q in (q for q in questions if q["image_id"] == i):
            mark = "ok" if answers[q["question_id"]] == truth[q["question_id"]] else f"truth: {truth[q['question_id']]}"
            print(f"    Q: {q['question']:55s} A: {answers[q['question_id']]:10s} ({mark})")


def main() -> int:
    t_start = time.time()
    seconds = {}
    for title, cfg, step in STEPS:
        print(f"\n=== {title}\n    python -m {step.__module__} {' '.join(command(step, cfg))}", flush=True)
        t0 = time.time()
        if step(command(step, cfg)) != 0:
            print("\nmake demo: the step above failed. If it refused a run of another config, output/demo holds "
                  "an earlier demo's runs: move that folder away (mv output/demo output/demo.old) and rerun.",
                  file=sys.stderr)
            return 1
        seconds[cfg, step] = time.time() - t0
    runs = {cfg: Path(load_experiment(cfg).run.output_dir) for _, cfg, _ in STEPS}
    print("\n=== results on the validation split (shapes, generated)")
    for title, cfg, step in STEPS:
        if step not in (train_main, evaluate_main) or cfg in (STAGE2, VQA):
            continue  # the builders print their own line; stage 2 and VQA are reported below
        metrics = last_validation(runs[cfg]) if cfg != RERANK else reranked(runs[cfg])
        if "txt_r1" in metrics:
            print_retrieval(f"{title} ({seconds[cfg, step]:.0f} s)", metrics)
        else:
            rows = "\n".join(f"  {k:22s} {v:7.2f}" for k, v in metrics.items())
            print(f"\n{title} ({seconds[cfg, step]:.0f} s)\n{rows}")
    caption = last_validation(runs[STAGE2])
    print(f"\nstage 2 captioning ({seconds[STAGE2, train_main]:.0f} s; beam 5 after \"a photo of\")")
    print("  " + "  ".join(f"{k} {caption[k]:.1f}" for k in ("bleu4", "cider", "meteor", "rouge_l")))
    vqa = json.loads((runs[VQA] / "metrics.json").read_text())["eval"]
    root = next(iter(builders(load_experiment(VQA)).values())).root
    print(f"\nzero-shot VQA ({seconds[VQA, evaluate_main]:.0f} s; the model never trained on questions)")
    print(f"  accuracy {vqa['shapes_vqa/val/accuracy']:.1f}   (blind: the most frequent training answer per "
          f"question type, {blind_accuracy(root):.1f})")
    print("  " + "  ".join(f"{k.split('accuracy_')[1]} {v:.1f}" for k, v in vqa.items() if "accuracy_" in k))
    predictions = runs[STAGE2] / "predictions"
    print("\n=== three validation images")
    print_examples(root, sorted(predictions.glob("shapes_caption_val_iter*.json"))[-1],
                   sorted((runs[VQA] / "predictions").glob("shapes_vqa_val_iter*.json"))[-1])
    print(f"\nbuilt for the demo: the Q-Former's vocabulary ({seconds[STAGE1, bert_vocab_main]:.0f} s), the tiny LLM "
          f"({seconds[STAGE2, tiny_llm_main]:.0f} s)")
    print(f"demo finished in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
