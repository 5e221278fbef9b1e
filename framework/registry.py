"""Registries of swappable parts and plugin discovery.

One :class:`Registry` per kind of part. A part registers itself with a decorator::

    from framework.registry import IMAGE_ENCODERS

    @IMAGE_ENCODERS.register("my_vit")
    class MyViT(nn.Module):
        def __init__(self, width: int = 768, depth: int = 12): ...

The keyword arguments of the registered callable (with their type hints and defaults) are the part's
config schema: a YAML section ``{name: my_vit, width: 1024}`` builds ``MyViT(width=1024)``, and a key the
signature does not have is an error before any work starts (see :mod:`framework.config`).

Parts are found in three ways, and ``framework`` never imports a concrete part by name:

* built-ins: every module under the ``plugins`` package is imported;
* installed packages: each entry point in the group :data:`ENTRY_POINT_GROUP` names a module to import;
* a config's ``plugins:`` list of extra module paths.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

ENTRY_POINT_GROUP = "blip2_framework.plugins"

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registry name. ``str()`` is the full, user-facing message."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


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

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
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
        return (f"unknown {self.kind} {name!r}{hint} Registered {self.kind} names: "
                f"{', '.join(known) or '(none)'}. A part in your own package registers itself through the "
                f"entry-point group {ENTRY_POINT_GROUP!r} or is listed under 'plugins:' in the config.")

    def names(self) -> List[str]:
        discover_plugins()
        return sorted(self._entries)

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
LR_SCHEDULERS = Registry("lr_scheduler", injected=("base_lr", "total_iters", "iters_per_epoch"))

REGISTRIES: Dict[str, Registry] = {r.kind: r for r in (
    IMAGE_ENCODERS, LLMS, MODELS, TASKS, DATASETS, PROCESSORS, LR_SCHEDULERS)}

_discovered = False


def discover_plugins() -> None:
    """Import the built-in ``plugins`` package and every entry point of :data:`ENTRY_POINT_GROUP` (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import plugins

    for mod in pkgutil.walk_packages(plugins.__path__, prefix="plugins."):
        importlib.import_module(mod.name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # name the package so a user knows whose plugin broke
            raise ImportError(f"plugin entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}) "
                              f"failed to import: {e}") from e


def load_plugin_modules(modules: Iterable[str]) -> None:
    """Import the extra plugin modules a config lists under ``plugins:``."""
    discover_plugins()
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ImportError(f"config 'plugins:' lists module {name!r}, which cannot be imported ({e}); "
                              f"install its package or put it on PYTHONPATH") from e


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


def build(kind: str, spec: Dict[str, Any], **extra: Any) -> Any:
    """Build part ``spec['name']`` of registry ``kind`` with the remaining keys as keyword arguments."""
    args = dict(spec)
    name = args.pop("name", None)
    if name is None:
        raise RegistryError(f"a {kind} section needs a 'name:' key; registered names: "
                            f"{', '.join(REGISTRIES[kind].names())}")
    return REGISTRIES[kind].get(name)(**args, **extra)
