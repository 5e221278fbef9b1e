"""``python -m framework.zoo``: the released BLIP-2 models, by the names LAVIS and transformers give them.

    python -m framework.zoo list                                  # every model, its format, what it reproduces
    python -m framework.zoo show caption_coco_opt2.7b             # the files it needs and where each comes from
    python -m framework.zoo prepare caption_coco_opt2.7b --out models/caption_coco_opt2.7b \\
        --src checkpoint=blip2_caption_opt2.7b.pth llm=opt-2.7b/

Nothing is downloaded: ``show`` gives each file's address, you fetch it, ``prepare`` converts it
(:mod:`framework.convert`, with the settings the released model was run with and the files' paths filled in)
and writes a **prepared folder**: ``model.yaml`` (weights checked to fit on the meta device), and, for a model
the paper evaluates, ``eval.yaml``: the paper's evaluation of it. The folder is what
``framework.load(folder)``, ``python -m framework.predict --cfg folder``, ``python -m framework.evaluate --cfg
folder`` (its ``eval.yaml``; results in ``folder/eval/``) and a config's ``_base_: folder/model.yaml`` take.
Images are processed as its image encoder declares (size, normalisation): no data set entry is needed.

The entries are registered parts (:data:`ZOO`); the built-in ones are in ``plugins/zoo/``. Importing this module
stays light (the entries import it when plugins are discovered): the converter is imported by the commands.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from framework.errors import USER_ERRORS, ConfigError
from framework.registry import ZOO

# where an entry's evaluation config (a path under the repository, e.g. projects/blip2/eval/...) is found
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Source:
    """A file ``prepare`` reads, given as ``--src ROLE=PATH``. ``sets``: the model key its path fills (e.g.
    ``model.llm.path``); None for the file the format converts."""
    role: str
    what: str
    address: str
    sets: Optional[str] = None


@dataclass(frozen=True)
class ZooModel:
    """A released model. ``format``: the registered format that converts it (``python -m framework.convert``);
    ``settings``: model keys the weights do not hold, as the releasing code ran it (``KEY=VALUE``);
    ``evaluation``: the experiment config, under the repository, of the paper's evaluation (None: the paper
    evaluates this model only through the ones built on it); ``reproduces``: the paper's figures for it."""
    summary: str
    format: str
    sources: Tuple[Source, ...]
    reproduces: str
    settings: Tuple[str, ...] = ()
    evaluation: Optional[str] = None
    also: Tuple[str, ...] = field(default=())  # the same weights under the other library's name

    def converted(self) -> Source:
        return next(s for s in self.sources if s.sets is None)


def show(name: str) -> str:
    """The entry as text: what it is, the files with their addresses, what ``prepare`` does, the paper's figures."""
    entry: ZooModel = ZOO.get(name)
    lines = [f"{name}: {entry.summary}", f"  reproduces: {entry.reproduces}"]
    if entry.also:
        lines.append(f"  the same weights as: {', '.join(entry.also)}")
    lines.append("  files (--src ROLE=PATH):")
    for s in entry.sources:
        lines.append(f"    {s.role:10s} {s.what}\n               from {s.address}")
    settings = list(entry.settings) + [f"{s.sets}=<{s.role}>" for s in entry.sources if s.sets]
    lines.append(f"  prepare: python -m framework.convert --from {entry.format} --src <{entry.converted().role}>"
                 + (" --options " + " ".join(map(shlex.quote, settings)) if settings else ""))
    lines.append(f"           then eval.yaml: {entry.evaluation}" if entry.evaluation else
                 "           (no evaluation of its own in the paper: no eval.yaml)")
    src = " ".join(f"{s.role}=..." for s in entry.sources)
    lines.append(f"  python -m framework.zoo prepare {name} --out models/{name.split('/')[-1]} --src {src}")
    return "\n".join(lines)


def _sources(entry: ZooModel, name: str, given: List[str]) -> Dict[str, Path]:
    """``--src ROLE=PATH`` as {role: path}; every role of the entry given once, every path existing."""
    roles = {s.role: s for s in entry.sources}
    out: Dict[str, Path] = {}
    for item in given:
        role, sep, path = item.partition("=")
        if not sep or role not in roles:
            raise ConfigError(f"--src {item}: give ROLE=PATH with ROLE one of {', '.join(roles)} "
                              f"(python -m framework.zoo show {name})")
        if role in out:
            raise ConfigError(f"--src: {role} given twice")
        out[role] = Path(path).expanduser()
    missing = [s for s in entry.sources if s.role not in out]
    if missing:
        raise ConfigError(f"{name} needs --src " + "; ".join(f"{s.role}=PATH ({s.what}, from {s.address})"
                                                              for s in missing))
    absent = [f"{r}={p}" for r, p in out.items() if not p.exists()]
    if absent:
        raise ConfigError(f"--src {' '.join(absent)}: no such file or folder")
    return out


def prepare(name: str, sources: List[str], out: Path, options: List[str] = (),
            evaluation: Optional[str] = None) -> Path:
    """Convert the entry's files into ``out`` (model.yaml, its weights, eval.yaml); ``options`` override the
    entry's settings, ``evaluation`` its evaluation config. Returns ``out``."""
    import yaml

    from framework.config import load_config
    from framework.convert import read

    entry: ZooModel = ZOO.get(name)
    paths = _sources(entry, name, list(sources))
    evaluation = evaluation or (str(REPO / entry.evaluation) if entry.evaluation else None)
    if evaluation and not Path(evaluation).is_file():
        raise ConfigError(f"the evaluation config {evaluation} does not exist (it comes with the repository's "
                          f"projects/ folder); pass --evaluation CONFIG")
    filled = [f"{s.sets}={paths[s.role].resolve()}" for s in entry.sources if s.sets]
    model_yaml = read(entry.format, paths[entry.converted().role], out, list(entry.settings) + filled + list(options))
    if evaluation:
        model, _ = load_config(model_yaml)
        spec = {"_base_": str(Path(evaluation).resolve()),
                "model": {"_delete_": True, **model["model"]},
                "run": {"output_dir": str((out / "eval").resolve())}}
        (out / "eval.yaml").write_text(f"# {name} evaluated as the paper did ({entry.reproduces}):\n"
                                       f"#   python -m framework.evaluate --cfg {out}\n"
                                       + yaml.safe_dump(spec, sort_keys=False))
        print(f"evaluate it as the paper did: python -m framework.evaluate --cfg {out}")
    (out / "zoo.yaml").write_text(yaml.safe_dump({"name": name, "format": entry.format, "reproduces": entry.reproduces,
                                                  "sources": {r: str(p.resolve()) for r, p in paths.items()}},
                                                 sort_keys=False))
    print(f"prepared {name} in {out}: from framework import load; model, preprocess = load({str(out)!r})")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from framework.cli import pull_options
    from framework.convert import into_new_folder

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
    pp.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                    help="model settings over the entry's (e.g. model.llm.precision=fp32 on a CPU)")
    argv, options = pull_options(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.command == "prepare":
        return into_new_folder(Path(args.out), args.overwrite,
                               lambda: prepare(args.name, args.src, Path(args.out), options, args.evaluation))
    try:
        if args.command == "list":
            for name in ZOO.names():
                entry = ZOO.get(name)
                print(f"{name:34s} {entry.format:6s} {entry.summary}\n{'':41s} reproduces: {entry.reproduces}")
        else:
            print(show(args.name))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
