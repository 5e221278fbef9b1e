"""``python -m framework.extract``: image and text embeddings to disk, for an index.

    python -m framework.extract --cfg output/stage1 --images photos/ --texts captions.txt --out feats.safetensors

``--cfg`` is what :func:`framework.load` takes (a run folder, a converted folder, a config); the model must embed
(a stage-1 model: its image query embeddings and text embeddings, the ITC space). ``--texts`` is a file of one
text per line. ``.safetensors`` output holds ``images`` [N, ...] and ``texts`` [M, D] with the image paths and
the texts in its metadata (``image_ids``, ``text_ids``, JSON lists, in row order); ``.npz`` holds the same as
arrays. An unreadable image is named and left out (exit status 1); nothing is written over an existing file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from framework.api import load
from framework.commands.cli import add_options, exit_status, pull_options
from framework.core.errors import ConfigError
from framework.core.logs import setup_console
from framework.data.images import batches, image_paths


def main(argv: Optional[List[str]] = None) -> int:
    argv, options = pull_options(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="framework.extract", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True, help="a run folder, a converted folder or a config")
    p.add_argument("--images", nargs="*", default=[], help="image files or folders")
    p.add_argument("--texts", help="a file of texts, one per line")
    p.add_argument("--out", required=True, help="a new .safetensors or .npz file")
    p.add_argument("--batch-size", type=int, default=32)
    add_options(p, "e.g. model.image_encoder.precision=fp32")
    p.add_argument("--allow-random-weights", action="store_true")
    args = p.parse_args(argv)
    setup_console()
    failed: List[str] = []

    def run() -> int:
        out = Path(args.out)
        if out.suffix not in (".safetensors", ".npz"):
            raise ConfigError(f"--out {out}: give a .safetensors or .npz file")
        if out.exists():
            raise ConfigError(f"--out {out} exists: choose a new file (nothing is written over another's)")
        if not args.images and not args.texts:
            raise ConfigError("give --images, --texts or both")
        texts = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()] \
            if args.texts else []
        model, preprocess = load(args.cfg, allow_random_weights=args.allow_random_weights, options=options)
        feats, ids = [], []
        for paths, images in batches(image_paths(args.images), preprocess, args.batch_size,
                                     lambda path, why: failed.append(f"{path}: {why}")):
            feats.append(model.embed(images=images)["images"])
            ids += [str(path) for path in paths]
        arrays = {}
        if feats:
            arrays["images"] = torch.cat(feats)
        if texts:
            arrays["texts"] = torch.cat([model.embed(texts=texts[i:i + args.batch_size])["texts"]
                                         for i in range(0, len(texts), args.batch_size)])
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in arrays.items()}, str(out),
                      metadata={"image_ids": json.dumps(ids), "text_ids": json.dumps(texts)})
        else:
            np.savez(out, **{k: v.numpy() for k, v in arrays.items()}, image_ids=np.array(ids, dtype=object),
                     text_ids=np.array(texts, dtype=object))
        for problem in failed:
            print(f"error: {problem}", file=sys.stderr)
        print(f"wrote {out}: {len(ids)} images, {len(texts)} texts")
        return 1 if failed else 0  # an unreadable image was named and skipped

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
