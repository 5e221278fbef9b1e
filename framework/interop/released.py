"""The released BLIP-2 models by the names LAVIS and transformers give them (:class:`ZooModel` entries,
registered in :data:`framework.core.registry.ZOO`; the built-in ones are in ``plugins/zoo/``), and :func:`prepare`,
which converts an entry's files into a prepared folder. ``python -m framework.zoo`` is the command around them.
Importing this module stays light (the entries import it when plugins are discovered).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from framework.core import resources
from framework.core.errors import ConfigError
from framework.core.registry import ZOO


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

    from framework.core.config import load_config
    from framework.interop.formats import read_into_ours

    entry: ZooModel = ZOO.get(name)
    paths = _sources(entry, name, list(sources))
    # an entry names its evaluation config under the shipped projects/ (framework.core.resources)
    evaluation = evaluation or (str(resources.root() / entry.evaluation) if entry.evaluation else None)
    if evaluation and not Path(evaluation).is_file():
        raise ConfigError(f"the evaluation config {evaluation} does not exist (it comes with the repository's "
                          f"projects/ folder); pass --evaluation CONFIG")
    filled = [f"{s.sets}={paths[s.role].resolve()}" for s in entry.sources if s.sets]
    model_yaml = read_into_ours(entry.format, paths[entry.converted().role], out, list(entry.settings) + filled + list(options))
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
