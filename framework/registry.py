"""Registries of swappable parts and plugin discovery.

One :class:`Registry` per kind of part. A part registers itself with a decorator::

    from framework.registry import IMAGE_ENCODERS

    @IMAGE_ENCODERS.register("my_vit")
    class MyViT(nn.Module):
        def __init__(self, width: int = 768, depth: int = 12): ...

The keyword arguments of the registered callable (with their type hints and defaults) are the part's
config schema: a YAML section ``{name: my_vit, width: 1024}`` builds ``MyViT(width=1024)``, and a key the
signature does not have is an error before any work starts (see :mod:`framework.config`).

Parts are found in two ways, and ``framework`` never imports a concrete part by name:

* installed packages: each entry point in the group :data:`ENTRY_POINT_GROUP` names a module to import, and
  where it is a package, every module below it, each on its own; the built-in ``plugins`` package is one of them
  (``pyproject.toml``);
* a config's ``plugins:`` list of extra module paths.

A discovered module that raises while importing costs only the parts it registers: the others stay usable, a
warning names it at discovery, and asking for a part nobody registered shows its traceback (the likely culprit)
to whoever wrote it. A module the config lists under ``plugins:`` is the config's own: its failure is an error.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import logging
import math
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from framework.errors import RegistryError

ENTRY_POINT_GROUP = "blip2_framework.plugins"

T = TypeVar("T")


def _where(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!r}"


class Registry:
    """A name -> callable table for one kind of part."""

    def __init__(self, kind: str, injected: Iterable[str] = (), reserved: Optional[Dict[str, Any]] = None) -> None:
        self.kind = kind
        # arguments the framework passes at build time: not config keys
        self.injected = frozenset(injected)
        # config keys the framework itself reads in every section of this kind (name -> schema field)
        self.reserved: Dict[str, Any] = dict(reserved or {})
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._default: Optional[str] = None

    def register(self, name: Optional[str] = None, default: bool = False) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``). ``default``: the
        part a config gets when it names none (see :meth:`default_spec`); one per registry."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if default:
                if self._default not in (None, key):
                    raise RegistryError(f"two default {self.kind}s: {self._default!r} and {key!r} ({_where(obj)})")
                self._default = key
            old = self._entries.get(key)
            if old is not None and old is not obj:
                if _same_definition(old, obj):  # the same file imported under two module names
                    return obj
                raise RegistryError(
                    f"duplicate {self.kind} name {key!r}: defined at {_where(old)} and again at {_where(obj)}; "
                    f"rename one of them")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        discover_plugins()
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        broken = "".join(f"\n--- plugin module {module} failed to import (the {self.kind} you name may be one of "
                         f"its parts):\n{tb}"
                         for module, tb in _broken.items())
        return (f"unknown {self.kind} {name!r}{hint} Registered {self.kind} names: "
                f"{', '.join(known) or '(none)'}. A part in your own package registers itself through the "
                f"entry-point group {ENTRY_POINT_GROUP!r} or is listed under 'plugins:' in the config.{broken}")

    def names(self) -> List[str]:
        discover_plugins()
        return sorted(self._entries)

    def default_spec(self) -> Dict[str, Any]:
        """``{name: <the part registered with default=True>}``: what a config that names none gets. The plugin
        declares it, so ``framework`` names no part."""
        discover_plugins()
        if self._default is None:
            raise RegistryError(f"no {self.kind} is registered as the default; name one in the config")
        return {"name": self._default}

    def __contains__(self, name: object) -> bool:
        discover_plugins()
        return name in self._entries


def _same_definition(a: Any, b: Any) -> bool:
    try:
        return (inspect.getsourcefile(a), inspect.getsourcelines(a)[1]) == (
            inspect.getsourcefile(b), inspect.getsourcelines(b)[1])
    except (TypeError, OSError):
        return False


IMAGE_ENCODERS = Registry("image_encoder")
LLMS = Registry("llm")
# model.checkpoint: one of our checkpoints whose weights load once the model is built (fine-tuning, evaluation)
MODELS = Registry("model", reserved={"checkpoint": (Optional[str], None)})
TASKS = Registry("task")
# datasets.<entry>.sample_ratio: the entry's share of the training samples when several are mixed (the paper's
# pretraining mix); unset everywhere: the entries are concatenated, each sample once per epoch
DATASETS = Registry("dataset", injected=("entry",), reserved={"sample_ratio": (Optional[float], None)})
PROCESSORS = Registry("processor")
# foreign weight formats (LAVIS, transformers): python -m framework.convert --from NAME / --to NAME
FORMATS = Registry("format")
# released models by name (python -m framework.zoo): framework.released.ZooModel entries, data rather than callables,
# so not among REGISTRIES (whose parts are built from config sections)
ZOO = Registry("zoo model")
LR_SCHEDULERS = Registry("lr_scheduler", injected=("base_lr", "total_iters", "iters_per_epoch"))

REGISTRIES: Dict[str, Registry] = {r.kind: r for r in (
    IMAGE_ENCODERS, LLMS, MODELS, TASKS, DATASETS, PROCESSORS, LR_SCHEDULERS, FORMATS)}

_discovered = False
# discovered plugin modules that raised while importing: module name -> its traceback
_broken: Dict[str, str] = {}


def discover_plugins() -> None:
    """Import every entry point of :data:`ENTRY_POINT_GROUP` (once), a package module by module: the built-in
    ``plugins`` package is one of them, a user's package another."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if _import_isolated(ep.value):
            package = importlib.import_module(ep.value)
            for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{ep.value}.",
                                              onerror=_record_broken):
                _import_isolated(info.name)


def _import_isolated(module: str) -> bool:
    """Import ``module``; a failure is recorded (:data:`_broken`) and warned about, not raised."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any error in a plugin's own code: its parts are missing, the rest work
        _record_broken(module)
        return False


def _record_broken(module: str) -> None:
    _broken[module] = _plugin_traceback()
    logging.getLogger("framework").warning(
        "plugin module %s failed to import; the parts it registers are unavailable (the traceback is shown "
        "when a config names one of them): %s", module, _broken[module].strip().splitlines()[-1])


def _plugin_traceback() -> str:
    """The traceback of the exception being handled, without the import machinery's frames: what a plugin's
    author needs is where their code raised."""
    exc = traceback.TracebackException(*sys.exc_info())
    exc.stack = traceback.StackSummary.from_list(
        [f for f in exc.stack if "importlib" not in f.filename and f.filename != __file__])
    return "".join(exc.format())


def load_plugin_modules(modules: Iterable[str]) -> None:
    """Import the extra plugin modules a config lists under ``plugins:``: the config depends on them, so one
    that cannot be imported is an error, with the module's traceback where its own code raised."""
    discover_plugins()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            missing = isinstance(e, ModuleNotFoundError) and e.name is not None and name.startswith(e.name)
            if missing:  # the module itself (or its package) is not there
                raise ImportError(f"config 'plugins:' lists module {name!r}, which cannot be imported ({e}); "
                                  f"install its package or put it on PYTHONPATH") from e
            raise ImportError(f"config 'plugins:' module {name!r} failed to import:\n{_plugin_traceback()}") from e


class PartOf:
    """Marks a config argument that is itself a part: a mapping ``{name: <registered name>, **args}``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"Part({self.kind!r})"


def Part(kind: str) -> Any:  # noqa: N802 - reads as a type in signatures: ``encoder: Part("image_encoder")``
    """Annotation for an argument holding a nested part of registry ``kind``; validated recursively."""
    from typing import Annotated

    if kind not in REGISTRIES:
        raise ValueError(f"Part({kind!r}): no such registry; known kinds: {', '.join(REGISTRIES)}")
    return Annotated[Dict[str, Any], PartOf(kind)]


@dataclass(frozen=True)
class Range:
    """``Annotated[float, Range(0, 1, hi_open=True)]``: a finite number in [lo, hi] (an end is left out where
    ``lo_open`` / ``hi_open``; None: unbounded). Checked with the key's type, before any work."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> Optional[str]:
        if value is None:  # Optional[...] left unset
            return None
        if not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low or high:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Length:
    """``Annotated[List[str], Length(1)]``: a list (or string) of ``lo`` to ``hi`` items (None: no upper end)."""
    lo: int = 0
    hi: Optional[int] = None

    def describe(self) -> str:
        return f"of {self.lo}{'' if self.hi == self.lo else '+' if self.hi is None else f' to {self.hi}'} items"

    def problem(self, value: Any) -> Optional[str]:
        if value is None or (self.lo <= len(value) and (self.hi is None or len(value) <= self.hi)):
            return None
        what = "characters" if isinstance(value, str) else "items"
        if self.lo == 1 and not value:
            return f"must not be empty, got {value!r}"
        want = f"exactly {self.lo}" if self.lo == self.hi else (
            f"at least {self.lo}" if self.hi is None else f"{self.lo} to {self.hi}")
        return f"must have {want} {what}, got {value!r}"


def build(kind: str, spec: Dict[str, Any], **extra: Any) -> Any:
    """Build part ``spec['name']`` of registry ``kind`` with the remaining keys as keyword arguments."""
    args = dict(spec)
    name = args.pop("name", None)
    if name is None:
        raise RegistryError(f"a {kind} section needs a 'name:' key; registered names: "
                            f"{', '.join(REGISTRIES[kind].names())}")
    return REGISTRIES[kind].get(name)(**args, **extra)
