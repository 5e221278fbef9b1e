"""``python -m framework.evaluate --cfg X.yaml --options model.checkpoint=PATH``: evaluation only.

Evaluates ``run.eval_splits`` and ``run.test_splits`` of every dataset entry and writes
``output_dir/metrics.json`` (and the config it ran with as ``output_dir/config.yaml``).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from framework import cli, dist
from framework.logs import logger
from framework.experiment import ExperimentConfig
from framework.runner import Runner


def _run(exp: ExperimentConfig, args: argparse.Namespace) -> None:
    if not exp.model.get("checkpoint"):
        logger.warning("model.checkpoint is not set: evaluating the model as built (no trained weights)")
    try:
        Runner(exp).evaluate_only()
    finally:
        dist.shutdown()


def main(argv: Optional[List[str]] = None) -> int:
    return cli.main("framework.evaluate", "Evaluate a model (model.checkpoint) on the configured splits.", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
