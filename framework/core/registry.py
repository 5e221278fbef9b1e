"""Registries of swappable parts and plugin discovery.

One :class:`Registry` per kind of part. A part registers itself with a decorator::

    from framework.core.registry import IMAGE_ENCODERS

    @IMAGE_ENCODERS.register("my_vit")
    class MyViT(nn.Module):
        def __init__(self, width: int = 768, depth: int = 12): ...

The keyword arguments of the registered callable (with their type hints and defaults) are the part's
config schema: a YAML section ``{name: my_vit, width: 1024}`` builds ``MyViT(width=1024)``, and a key the
signature does not have is an error before any work starts (see :mod:`framework.core.config`).

Parts are found in two ways, and ``framework`` never imports a concrete part by name:

* installed packages: each entry point in the group :data:`ENTRY_POINT_GROUP` names a module, and where it is a
  package every module below it; the built-in ``plugins`` package is one of them (``pyproject.toml``). Their
  sources are read, not run: a module whose registrations are all ``@REGISTRY.register("name")`` decorators is
  imported when one of its names is asked for, any other module at discovery;
* a config's ``plugins:`` list of extra module paths, imported when the config is loaded.

So a discovered module that raises while importing costs only the parts it registers: a config naming one of
them gets the module's traceback (its own frames) for whoever wrote it; the others never run it. A module the
config lists under ``plugins:`` is the config's own: its failure is an error.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

from framework.core.errors import RegistryError

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
            failed = _load_declaring(self.kind, name)
            if failed:
                raise RegistryError(f"{self.kind} {name!r} is registered by plugin module {failed}, which failed "
                                    f"to import:\n{_broken[failed]}")
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        _load_all()
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
        _load_all()
        return sorted(self._entries)

    def default_spec(self) -> Dict[str, Any]:
        """``{name: <the part registered with default=True>}``: what a config that names none gets. The plugin
        declares it, so ``framework`` names no part."""
        discover_plugins()
        if self._default is None:
            _load_declaring(self.kind, _DEFAULT)
        if self._default is None:
            raise RegistryError(f"no {self.kind} is registered as the default; name one in the config")
        return {"name": self._default}

    def __contains__(self, name: object) -> bool:
        discover_plugins()
        if name not in self._entries:
            _load_declaring(self.kind, str(name))
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
# released models by name (python -m framework.zoo): framework.interop.released.ZooModel entries, data rather than callables,
# so not among REGISTRIES (whose parts are built from config sections)
ZOO = Registry("zoo model")
LR_SCHEDULERS = Registry("lr_scheduler", injected=("base_lr", "total_iters", "iters_per_epoch"))

REGISTRIES: Dict[str, Registry] = {r.kind: r for r in (
    IMAGE_ENCODERS, LLMS, MODELS, TASKS, DATASETS, PROCESSORS, LR_SCHEDULERS, FORMATS)}

_discovered = False
# discovered plugin modules that raised while importing: module name -> its traceback
_broken: Dict[str, str] = {}
# (registry kind, part name) -> the discovered module that registers it, read from its source, not yet imported
_declared: Dict[Tuple[str, str], str] = {}
_DEFAULT = "\0default"  # _declared's name for "the part registered with default=True"


def discover_plugins() -> None:
    """Find the parts of every entry point of :data:`ENTRY_POINT_GROUP` (once; the built-in ``plugins`` package is
    one, a user's package another), module by module, without running them: a module whose registrations are
    all ``@REGISTRY.register("name")`` (or ``register()`` on a class) is indexed by those names and imported when
    one is asked for; any other module is imported now. So a module that raises costs only its own parts."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = _find(ep.value)
        if spec is None or spec.origin is None:
            _import_isolated(ep.value)  # not a plain source module or package: import it, as before
            continue
        folders = list(spec.submodule_search_locations or [])
        files = {ep.value: Path(spec.origin)}
        for folder in folders:
            for path in sorted(Path(folder).rglob("*.py")):
                parts = path.relative_to(folder).with_suffix("").parts
                files[".".join((ep.value,) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
        for module, path in files.items():
            names = _registrations(path)
            if names is None:
                _import_isolated(module)
            for key in names or ():
                _declared.setdefault(key, module)


def _find(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _registrations(path: Path) -> Optional[List[Tuple[str, str]]]:
    """The (kind, name) pairs a module's source registers, when every registration in it is a decorator naming
    its part literally (or a class by its own name); None when it registers otherwise (it is then imported)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None  # importing it will say what is wrong
    kinds = {name: r.kind for name, r in globals().items() if isinstance(r, Registry)}
    found, decorated = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "register":
                decorated.add(id(deco))
                base = deco.func.value
                kind = kinds.get(base.id) if isinstance(base, ast.Name) else None
                if kind is None or len(deco.args) > 1 or (deco.args and not (
                        isinstance(deco.args[0], ast.Constant) and isinstance(deco.args[0].value, str))):
                    return None
                name = deco.args[0].value if deco.args else node.name
                found.append((kind, name))
                if any(k.arg == "default" for k in deco.keywords):
                    found.append((kind, _DEFAULT))
    for node in ast.walk(tree):  # a register call that is not one of those decorators: not indexable
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register" \
                and id(node) not in decorated:
            return None
    return found


def _load_declaring(kind: str, name: str) -> Optional[str]:
    """Import the module that declares part ``name`` of ``kind``, if one does; returns it if it failed."""
    module = _declared.pop((kind, name), None)
    if module is None:
        return None
    if module not in _broken:
        _import_isolated(module)
    return module if module in _broken else None


def _load_all() -> None:
    """Import every indexed module (a listing of names, a name nobody declares)."""
    for module in sorted(set(_declared.values())):
        if module not in _broken:
            _import_isolated(module)
    _declared.clear()


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


def build(kind: str, spec: Dict[str, Any], **extra: Any) -> Any:
    """Build part ``spec['name']`` of registry ``kind`` with the remaining keys as keyword arguments."""
    args = dict(spec)
    name = args.pop("name", None)
    if name is None:
        raise RegistryError(f"a {kind} section needs a 'name:' key; registered names: "
                            f"{', '.join(REGISTRIES[kind].names())}")
    return REGISTRIES[kind].get(name)(**args, **extra)
