"""``python -m framework.evaluate --cfg X.yaml --options model.checkpoint=PATH``: evaluation only.

Evaluates ``run.eval_splits`` and ``run.test_splits`` of every dataset entry and writes ``metrics.json``, the
config it ran with (``config.yaml``) and the predictions into ``run.output_dir``, or, when that folder holds a
training run (say, its own ``config.yaml`` was given), into ``<output_dir>/eval/<checkpoint name>/``: a training
run's files are never touched. An earlier evaluation's files there are replaced only with ``--overwrite``.
``--cfg RUN_FOLDER`` evaluates that run's best checkpoint (its last when it kept no best) with its config.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from framework.commands import cli
from framework.core import dist
from framework.core.logs import logger
from framework.engine.experiment import ExperimentConfig
from framework.engine.runner import Runner


def _run(exp: ExperimentConfig, args: argparse.Namespace) -> None:
    if not exp.model.get("checkpoint"):
        logger.warning("model.checkpoint is not set: evaluating the model as built (no trained weights)")
    try:
        Runner(exp).evaluate_only(overwrite=args.overwrite)
    finally:
        dist.shutdown()


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation's files in the folder the results go to (never a training "
                        "run's)")


def main(argv: Optional[List[str]] = None) -> int:
    return cli.main("framework.evaluate", "Evaluate a model (model.checkpoint) on the configured splits.", _run, argv,
                    _arguments, weights_from_run=True)


if __name__ == "__main__":
    sys.exit(main())
