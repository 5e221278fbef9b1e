"""``python -m framework.convert``: bring weights people already have into this framework, and take ours out.

    python -m framework.convert --from lavis --to ours --src blip2_pretrained.pth --out converted/
    python -m framework.convert --from hf --to ours --src blip2-opt-2.7b/ --out converted/
    python -m framework.convert --from ours --to hf --src experiment.yaml --out blip2-hf/

Each foreign format is a registered part (``python -m framework.registry format`` lists them; the built-in ones
are in ``plugins/formats/``). Converting into ours writes the weights into ``--out`` and ``model.yaml``, a
``model:`` section to inherit (``_base_: converted/model.yaml``) that builds the network the weights are for;
``--options model.llm.path=DIR ...`` sets what the source does not hold (a LAVIS file has no LLM). Before it
reports success the converter builds that section on the meta device and checks every written file fits it by
name and shape. Every source key is placed or reported with the reason it is left out.

Converting out of ours reads an experiment YAML (``model.checkpoint`` loaded) and writes the format's files.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional

import yaml
from omegaconf import OmegaConf

from framework.config import apply_options, resolve
from framework.errors import USER_ERRORS, ConfigError
from framework.formats import Converted, check_builds
from framework.registry import FORMATS


def read(source: str, src: Path, out: Path, options: List[str]) -> Path:
    """``--from source --to ours``: convert, write ``model.yaml`` (``options`` applied), check it builds."""
    converted: Converted = FORMATS.get(source)().read(src, out)
    origins = {}
    cfg = resolve(apply_options(OmegaConf.create({"model": converted.model}), options, origins), origins)
    model_yaml = out / "model.yaml"
    model_yaml.write_text(f"# converted from {src} by python -m framework.convert --from {source}\n"
                          + yaml.safe_dump(cfg, sort_keys=False))
    print(f"converted {src} -> {out}")
    for part, n in converted.counts.items():
        print(f"  {part:12s} {n:6d} tensors")
    for reason in sorted(set(converted.left_out.values())):
        keys = [k for k, r in converted.left_out.items() if r == reason]
        print(f"  left out, {reason}: {len(keys)} keys ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    given = {o.split("=", 1)[0] for o in options}
    needs = [n for n in converted.needs if n.split(":", 1)[0] not in given]
    if any(n.startswith("model.llm.path") for n in needs):  # the model cannot be built without it
        print(f"written, not yet checked: {model_yaml} needs\n  " + "\n  ".join(needs)
              + "\nrerun with --options KEY=VALUE for each, or set them in your config")
        return model_yaml
    from framework.cli import load_model_file

    check_builds(load_model_file(model_yaml))
    print(f"checked: {model_yaml} builds and every written file fits it")
    for n in needs:
        print(f"before use, set {n}")
    print(f"use it: _base_: {model_yaml}")
    return model_yaml


def write(target: str, experiment: str, out: Path, options: List[str]) -> None:
    """``--from ours --to target``: build the experiment's model (``model.checkpoint`` loaded) and write it."""
    from framework.cli import load_experiment
    from framework.models.build import build_model

    exp = load_experiment(experiment, options)
    FORMATS.get(target)().write(build_model(exp.model), exp.model, out)


def main(argv: Optional[List[str]] = None) -> int:
    formats = FORMATS.names()
    p = argparse.ArgumentParser(prog="framework.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", choices=formats + ["ours"], required=True)
    p.add_argument("--to", dest="target", choices=formats + ["ours"], required=True)
    p.add_argument("--src", required=True, help="the folder or file to read; --from ours: an experiment YAML whose "
                                                "model (with model.checkpoint) is exported. "
                   + "; ".join(f"--from {n}: {FORMATS.get(n).reads}" for n in formats if FORMATS.get(n).reads))
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides: of the written model.yaml (--to ours) or of the experiment (--from ours)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that is not empty")
    args = p.parse_args(argv)

    def convert() -> None:
        if (args.source == "ours") == (args.target == "ours"):
            raise ConfigError(f"--from {args.source} --to {args.target}: one side must be ours (formats: "
                              f"{', '.join(formats)})")
        if args.target != "ours" and not FORMATS.get(args.target).writes:
            raise ConfigError(f"--to {args.target}: this format is read only")
        if args.target == "ours":
            read(args.source, Path(args.src), Path(args.out), args.options)
        else:
            write(args.target, args.src, Path(args.out), args.options)

    return into_new_folder(Path(args.out), args.overwrite, convert)


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
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
