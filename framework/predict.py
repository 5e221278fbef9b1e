"""``python -m framework.predict``: use a trained or converted model on your own images.

    python -m framework.predict --cfg X.yaml caption photos/ cat.jpg            # a caption per image
    python -m framework.predict --cfg X.yaml ask cat.jpg "what is the cat doing?"
    python -m framework.predict --cfg X.yaml rank --texts "a cat" "a dog" -- a.jpg b.jpg

``--cfg`` is an experiment YAML (``model.checkpoint`` names the weights; ``--options`` overrides as in
training); images go through the eval processors of its first data set entry. Any JPEG/PNG size and mode works
(grayscale, palette, RGBA; EXIF rotation applied). A file that cannot be read is reported by name and the
others are still processed (exit status 1). ``--json`` writes one JSON object per line instead of text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from framework.cli import load_experiment, pull_options
from framework.data.images import load_image
from framework.errors import USER_ERRORS, ConfigError
from framework.logs import setup_console
from framework.models.interfaces import Generative, Retrievable, require
from framework.models.build import build_model
from framework.experiment import builders

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def image_paths(items: List[str]) -> List[Path]:
    """Files as given; folders expanded to their image files, sorted. A folder with none is an error."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"{p}: no image files in this folder (looked for "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        else:
            out.append(p)
    return out


def batches(paths: List[Path], processor: Callable, size: int, report: Callable[[Path, str], None]
            ) -> Iterator[Tuple[List[Path], torch.Tensor]]:
    """Processed images in batches of ``size``; an unreadable file is reported and skipped."""
    done: List[Tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            done.append((path, processor(load_image(path))))
        except Exception as e:  # PIL raises many types for unreadable files
            report(path, f"cannot read image ({type(e).__name__}: {e})")
            continue
        if len(done) == size:
            yield [p for p, _ in done], torch.stack([t for _, t in done])
            done = []
    if done:
        yield [p for p, _ in done], torch.stack([t for _, t in done])


class Predictor:
    def __init__(self, exp, args: argparse.Namespace) -> None:
        self.model = build_model(exp.model).eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() and exp.run.device != "cpu" else "cpu")
        self.model.to(self.device)
        entries = builders(exp)
        if not entries:
            raise ConfigError("--cfg has no datasets: predict takes the image processors of its first entry")
        self.processor = next(iter(entries.values())).processors("eval")["image"]
        self.args, self.failed = args, 0

    def report(self, path: Path, problem: str) -> None:
        self.failed += 1
        print(f"error: {path}: {problem}", file=sys.stderr)

    def emit(self, record: Dict[str, Any]) -> None:
        if self.args.json:
            print(json.dumps(record), flush=True)
        else:
            print("\t".join(str(v) for v in record.values()), flush=True)

    def need(self, contract: type) -> None:
        require(self.model, contract, self.args.command, "a stage-2 model captions and answers, a stage-1 model ranks")

    @torch.no_grad()
    def caption(self) -> None:
        self.need(Generative)
        for paths, images in batches(image_paths(self.args.images), self.processor, self.args.batch_size, self.report):
            texts = self.model.generate(images.to(self.device), **self.decoding())
            for path, text in zip(paths, texts):
                self.emit({"image": str(path), "caption": text})

    @torch.no_grad()
    def ask(self) -> None:
        self.need(Generative)
        prompt = self.args.prompt_template.format(self.args.question)
        for paths, images in batches(image_paths([self.args.image]), self.processor, 1, self.report):
            answer = self.model.generate(images.to(self.device), [prompt], **self.decoding())[0]
            self.emit({"image": str(paths[0]), "question": self.args.question, "answer": answer})

    @torch.no_grad()
    def rank(self) -> None:
        self.need(Retrievable)
        feats, kept = [], []
        for paths, images in batches(image_paths(self.args.images), self.processor, self.args.batch_size, self.report):
            feats.append(self.model.image_features(images.to(self.device)).float().cpu())
            kept += paths
        if not kept:
            return
        sims = self.model.similarity(torch.cat(feats), self.model.text_features(self.args.texts).float().cpu())
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
    p.add_argument("--cfg", required=True)
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides, anywhere on the command line")
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
    try:
        exp = load_experiment(args.cfg, options)
        if not exp.model.get("checkpoint") and not args.allow_random_weights:
            raise ConfigError(f"--cfg {args.cfg}: model.checkpoint is not set, so the model would predict with "
                              f"untrained weights; give its weights (--options model.checkpoint=RUN/checkpoints/"
                              f"best.pt, or a converted model.yaml) or pass --allow-random-weights")
        predictor = Predictor(exp, args)
        getattr(predictor, args.command)()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if predictor.failed else 0


if __name__ == "__main__":
    sys.exit(main())
