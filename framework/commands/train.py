"""``python -m framework.train --cfg X.yaml [--options k=v ...] [--resume auto|PATH] [--dry-run [--no-cost]]``"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from framework.commands import cli
from framework.core import dist
from framework.core.errors import ConfigError
from framework.engine.experiment import ExperimentConfig
from framework.engine.runner import Runner


def _run(exp: ExperimentConfig, args: argparse.Namespace) -> None:
    if not exp.run.train_splits:
        raise ConfigError("run.train_splits is empty: there is nothing to train on; name the training split(s), "
                          "e.g. run.train_splits=[train], or run python -m framework.evaluate to only evaluate")
    try:
        Runner(exp).train(resume=args.resume, overwrite=args.overwrite)
    finally:
        dist.shutdown()


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from a checkpoint; 'auto' takes output_dir/checkpoints/last.pt if there is one")
    p.add_argument("--overwrite", action="store_true",
                   help="output_dir holds another run: delete its files (config, logs, checkpoints) and start afresh")
    p.add_argument("--no-cost", action="store_true",
                   help="with --dry-run: leave out the estimate of an iteration's FLOPs and memory (about 5-10 s for "
                        "a real-size model)")


def main(argv: Optional[List[str]] = None) -> int:
    return cli.main("framework.train", "Train a model from an experiment config.", _run, argv, _args)


if __name__ == "__main__":
    sys.exit(main())
