"""``python -m framework.predict``: use a trained or converted model on your own images.

    python -m framework.predict --cfg X.yaml caption photos/ cat.jpg            # a caption per image
    python -m framework.predict --cfg X.yaml ask cat.jpg "what is the cat doing?"
    python -m framework.predict --cfg X.yaml rank --texts "a cat" "a dog" -- a.jpg b.jpg

``--cfg`` is what :func:`framework.load` takes: a run folder (its best weights), a converted folder (its
``model.yaml``) or a config (``model.checkpoint`` names the weights); ``--options`` overrides as in training,
anywhere on the line. Images go through the eval processors of the config's first data set entry, or the image
encoder's own. A model without trained weights is refused unless ``--allow-random-weights``. Any JPEG/PNG size
and mode works (grayscale, palette, RGBA; EXIF rotation applied). A file that cannot be read is reported by name and the
others are still processed (exit status 1). ``--json`` writes one JSON object per line instead of text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from framework.api import Model, load
from framework.commands.cli import add_options, exit_status, pull_options
from framework.core.logs import setup_console
from framework.data.images import batches, image_paths


class Predictor:
    """The commands over :func:`framework.load`'s model: images read and batched here, unreadable ones named."""

    def __init__(self, model: Model, args: argparse.Namespace) -> None:
        self.model, self.args, self.failed = model, args, 0

    def report(self, path: Path, problem: str) -> None:
        self.failed += 1
        print(f"error: {path}: {problem}", file=sys.stderr)

    def emit(self, record: Dict[str, Any]) -> None:
        if self.args.json:
            print(json.dumps(record), flush=True)
        else:
            print("\t".join(str(v) for v in record.values()), flush=True)

    def _batches(self, items: List[str], size: int) -> Iterator[Tuple[List[Path], torch.Tensor]]:
        return batches(image_paths(items), self.model.preprocess, size, self.report)

    def caption(self) -> None:
        for paths, images in self._batches(self.args.images, self.args.batch_size):
            for path, text in zip(paths, self.model.caption(images, **self.decoding())):
                self.emit({"image": str(path), "caption": text})

    def ask(self) -> None:
        for paths, images in self._batches([self.args.image], 1):
            answer = self.model.ask(images, [self.args.question], self.args.prompt_template, **self.decoding())[0]
            self.emit({"image": str(paths[0]), "question": self.args.question, "answer": answer})

    def rank(self) -> None:
        feats, kept = [], []
        for paths, images in self._batches(self.args.images, self.args.batch_size):
            feats.append(self.model.embed(images=images)["images"])
            kept += paths
        if not kept:
            return
        sims = self.model.module.similarity(torch.cat(feats), self.model.embed(texts=self.args.texts)["texts"])
        for i, path in enumerate(kept):
            order = sims[i].argsort(descending=True).tolist()
            self.emit({"image": str(path), "texts": [self.args.texts[j] for j in order],
                       "scores": [round(float(sims[i, j]), 4) for j in order]})
        for j, text in enumerate(self.args.texts):
            order = sims[:, j].argsort(descending=True).tolist()
            self.emit({"text": text, "images": [str(kept[i]) for i in order],
                       "scores": [round(float(sims[i, j]), 4) for i in order]})

    def decoding(self) -> Dict[str, Any]:
        return {"num_beams": self.args.num_beams, "max_new_tokens": self.args.max_new_tokens, "min_new_tokens": 1}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framework.predict", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True, help="a run folder, a converted folder (model.yaml) or a config")
    add_options(p, "e.g. model.llm.precision=fp32")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="predict with a model whose config names no trained weights (model.checkpoint)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tab-separated text")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=30)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("caption", help="a caption per image")
    c.add_argument("images", nargs="+", help="image files or folders")
    a = sub.add_parser("ask", help="answer a question about an image")
    a.add_argument("image")
    a.add_argument("question")
    a.add_argument("--prompt-template", default="Question: {} Answer:",
                   help="{} is the question (task.prompt_template)")
    r = sub.add_parser("rank", help="rank texts for each image and images for each text (ITC)")
    r.add_argument("--texts", nargs="+", required=True)
    r.add_argument("images", nargs="+")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv, options = pull_options(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    setup_console()

    def run() -> int:
        model, _ = load(args.cfg, allow_random_weights=args.allow_random_weights, options=options)
        predictor = Predictor(model, args)
        getattr(predictor, args.command)()
        return 1 if predictor.failed else 0  # an unreadable image was named and skipped

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
