"""``python -m framework.zoo``: the released BLIP-2 models, by the names LAVIS and transformers give them.

    python -m framework.zoo list                                  # every model, its format, what it reproduces
    python -m framework.zoo show caption_coco_opt2.7b             # the files it needs and where each comes from
    python -m framework.zoo prepare caption_coco_opt2.7b --out models/caption_coco_opt2.7b \\
        --src checkpoint=blip2_caption_opt2.7b.pth llm=opt-2.7b/

Nothing is downloaded: ``show`` gives each file's address, you fetch it, ``prepare`` converts it
(:mod:`framework.commands.convert`, with the settings the released model was run with and the files' paths filled in)
and writes a **prepared folder**: ``model.yaml`` (weights checked to fit on the meta device), and, for a model
the paper evaluates, ``eval.yaml``: the paper's evaluation of it. The folder is what
``framework.load(folder)``, ``python -m framework.predict --cfg folder``, ``python -m framework.evaluate --cfg
folder`` (its ``eval.yaml``; results in ``folder/eval/``) and a config's ``_base_: folder/model.yaml`` take.
Images are processed as its image encoder declares (size, normalisation): no data set entry is needed.

The entries and ``prepare`` are :mod:`framework.interop.released`; the built-in entries are in ``plugins/zoo/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from framework.commands.cli import (
    add_options,
    exit_status,
    into_new_folder,
    pull_options,
)
from framework.core.registry import ZOO
from framework.interop.released import prepare, show


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="framework.zoo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model with its format and the paper's figures for it")
    sub.add_parser("show", help="one model's files, their addresses and what prepare does").add_argument("name")
    pp = sub.add_parser("prepare", help="convert a model's files into a prepared folder")
    pp.add_argument("name")
    pp.add_argument("--src", nargs="+", required=True, metavar="ROLE=PATH", help="the files `show NAME` lists")
    pp.add_argument("--out", required=True, help="the folder to write (new or empty)")
    pp.add_argument("--evaluation", help="the experiment config eval.yaml is based on (default: the paper's)")
    pp.add_argument("--overwrite", action="store_true", help="write into an --out folder that is not empty")
    add_options(pp, "model settings over the entry's, e.g. model.llm.precision=fp32 on a CPU")
    argv, options = pull_options(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.command == "prepare":
        return into_new_folder(Path(args.out), args.overwrite,
                               lambda: prepare(args.name, args.src, Path(args.out), options, args.evaluation))

    def listing() -> int:
        if args.command == "list":
            for name in ZOO.names():
                entry = ZOO.get(name)
                print(f"{name:34s} {entry.format:6s} {entry.summary}\n{'':41s} reproduces: {entry.reproduces}")
        else:
            print(show(args.name))
        return 0

    return exit_status(listing)


if __name__ == "__main__":
    sys.exit(main())
