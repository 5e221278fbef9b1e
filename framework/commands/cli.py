"""What the commands share: arguments (``--options`` anywhere), a run folder as ``--cfg``, the dry run, the output
folder a command writes, and error reporting."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from framework.core import checkpoint, dist, resources
from framework.core.errors import USER_ERRORS, ConfigError, NonFiniteLossError
from framework.core.logs import setup_console
from framework.engine import fsdp
from framework.engine.cost import describe as describe_cost
from framework.engine.experiment import ExperimentConfig, load_experiment
from framework.engine.experiment_data import builders
from framework.models.build import build_model, parameter_table, weight_files


def pull_options(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the arguments without them, the ``--options KEY=VALUE ...`` overrides found anywhere among them): a group
    ends at the first token that is not ``KEY=VALUE``, so ``--options`` may come before a subcommand or a file
    argument without swallowing it."""
    rest, options, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        if argv[i] == "--options":
            i += 1
            while i < len(argv) and "=" in argv[i] and not argv[i].startswith("-"):
                options.append(argv[i])
                i += 1
            continue
        rest.append(argv[i])
        i += 1
    return rest, options


def add_options(p: argparse.ArgumentParser, example: str) -> None:
    """The ``--options KEY=VALUE ...`` argument every command takes (:func:`pull_options` reads it anywhere on
    the line; declared here so ``--help`` shows it)."""
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"config overrides, anywhere on the command line; {example}")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--cfg", required=True, help="experiment YAML, or a run folder (its config.yaml)")
    add_options(p, "e.g. run.max_iters=100 model.checkpoint=out/checkpoints/best.pt")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, build the model on the meta device, list data files (training: and estimate an "
                        "iteration's FLOPs and memory), and exit")
    return p


# parameters from which a model is a real one, not a CPU-sized test or demo (the demo's: under 10M; BLIP-2's
# smallest, ViT-L + Q-Former: 470M)
REAL_SIZE = 100_000_000


def dry_run(exp: ExperimentConfig, cost: bool = False) -> None:
    """Parameter counts of the model built on ``meta``, the data files the run would read, and with ``cost``
    what a training iteration costs (:mod:`framework.engine.cost`)."""
    fsdp.check(exp.run)
    with torch.device("meta"):
        model = build_model(exp.model)
    print(f"config OK. model {exp.model['name']!r} (built on the meta device):")
    print(parameter_table(model))
    print("model files:")
    for f in weight_files(model, exp.model):
        print(f"  [{'exists' if f.path.exists() else 'MISSING'}] {f.role}: {f.path}")
    splits = exp.run.train_splits + exp.run.eval_splits + exp.run.test_splits
    print("data files:")
    generated = []
    for entry, builder in builders(exp).items():
        for f in builder.data_files(splits):
            state = "exists" if f.path.exists() else ("generated on first use" if f.generated else "MISSING")
            print(f"  [{state}] {entry}: {f.role}: {f.path}")
            generated += [entry] if f.generated and entry not in generated else []
    for line in describe_cost(exp) if cost else []:
        print(line)
    size = sum(p.numel() for p in model.parameters())
    if generated and size >= REAL_SIZE:
        print(f"WARNING: a real-size model ({size / 1e6:,.0f}M parameters) with generated data: "
              f"{', '.join(f'datasets.{e}' for e in generated)}. Synthetic images teach a model of this size "
              f"nothing useful; name real data sets (the entries of {resources.root() / 'datasets_cfg'}) or your "
              f"own (docs/recipes/)")



def run_folder(folder: Path, options: List[str], with_weights: bool) -> Tuple[str, List[str]]:
    """A run folder given as ``--cfg``: its ``config.yaml``, and with ``with_weights`` its best checkpoint (else its
    last) as ``model.checkpoint`` unless the options name one. With ``with_weights``, a prepared model's folder
    (``python -m framework.zoo prepare``) gives its ``eval.yaml``."""
    if not (folder / "config.yaml").is_file():
        if with_weights and (folder / "eval.yaml").is_file():  # a prepared model (python -m framework.zoo)
            return str(folder / "eval.yaml"), options
        if (folder / "model.yaml").is_file():
            raise ConfigError(f"--cfg {folder}: a converted or prepared model (model.yaml) without an evaluation "
                              f"(eval.yaml); write a config with `_base_: {folder / 'model.yaml'}` and give that")
        raise ConfigError(f"--cfg {folder}: a folder, but not a run's (no config.yaml) nor a prepared model's "
                          f"(eval.yaml); give a run folder or a config")
    if with_weights and not any(o.startswith("model.checkpoint=") for o in options):
        weights = checkpoint.run_weights(folder)
        if weights is None:
            raise ConfigError(f"--cfg {folder}: the run has no checkpoints/best.pt or last.pt to evaluate")
        options = options + [f"model.checkpoint={weights}"]
    return str(folder / "config.yaml"), options


def main(prog: str, description: str, run: Callable[[ExperimentConfig, argparse.Namespace], None],
         argv: Optional[List[str]] = None, extra_args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
         weights_from_run: bool = False) -> int:
    """A command over an experiment: ``--cfg`` a config file or a run folder (its config.yaml; with
    ``weights_from_run``, its best weights too), ``--options`` anywhere."""
    p = parser(prog, description)
    extra_args(p)
    argv, options = pull_options(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.options = options
    setup_console()
    try:
        args.cfg = str(resources.find_config(args.cfg))
        if Path(args.cfg).is_dir():
            args.cfg, args.options = run_folder(Path(args.cfg), args.options, weights_from_run)
        if not Path(args.cfg).is_file():
            raise ConfigError(f"--cfg {args.cfg}: no such file (give the path of an experiment YAML or a run "
                              f"folder; the shipped experiments are under {resources.root() / 'projects'})")
        exp = load_experiment(args.cfg, args.options)
        if args.dry_run:
            dry_run(exp, cost=not getattr(args, "no_cost", True))
            return 0
        run(exp, args)
    except USER_ERRORS as e:
        return report(e)
    except RuntimeError as e:
        if not dist.timed_out(e):
            raise
        print(f"error: rank {dist.launch_rank()} waited more than run.dist_timeout_s={exp.run.dist_timeout_s:g} s "
              f"for another rank (stopped, hung or dead), so the job stops ({str(e).splitlines()[0][-120:]}). "
              f"Continue it with --resume auto once every rank can run; raise run.dist_timeout_s if a step is "
              f"legitimately that slow",
              file=sys.stderr)
        return 3
    return 0


def into_new_folder(out: Path, overwrite: bool, work: Callable[[], None]) -> int:
    """Run ``work``, which writes into ``out``, as a command: ``out`` must be new or empty (else ``overwrite``);
    a user error is printed (exit status 2) and the folder it created removed, so nothing half-done is left."""
    fresh = not out.exists()
    try:
        if not fresh and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise ConfigError(f"--out {out} exists and is not an empty folder: its files would be overwritten; "
                              f"choose a new folder or pass --overwrite")
        work()
    except USER_ERRORS as e:
        if fresh and out.exists():
            shutil.rmtree(out)
        return report(e)
    return 0


def report(error: Exception) -> int:
    """Show a user error (a bad config, file, checkpoint...) as ``error: ...``, no traceback; its exit status:
    1 for a loss that went non-finite, 2 for any other."""
    print(f"error: {error}", file=sys.stderr)
    return 1 if isinstance(error, NonFiniteLossError) else 2


def exit_status(work: Callable[[], int]) -> int:
    """Run a command's ``work`` (which returns its exit status) and report a user error it raises."""
    try:
        return work()
    except USER_ERRORS as e:
        return report(e)
