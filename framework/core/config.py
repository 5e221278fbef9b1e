"""Load, inherit, override and validate experiment configs.

A config is a YAML file. ``_base_: path`` or ``_base_: [a.yaml, b.yaml]`` (relative to the including file)
names files it inherits: the bases are deep-merged in order, then the file itself; later wins, a list is
replaced, not appended; a mapping marked ``_delete_: true`` replaces the base's mapping (e.g. another
``datasets:`` set) instead of merging into it. ``--options a.b=c`` overrides come last, typed as YAML types them (``3`` is an int,
``3.0`` a float, ``[1,2]`` a list, ``null`` None). Interpolations: ``${oc.env:VAR,default}`` and
``${pkg:package_name}`` (the folder of an installed package, e.g. a BERT shipped on PyPI).

Validation is against schemas that live next to the code reading each section: dataclasses (for example
:class:`framework.engine.experiment.RunConfig`) and the keyword signatures of registered parts (a section
``{name: x, ...}`` is checked against the signature of part ``x``). An unknown key, a missing required key
or a wrong type raises :class:`ConfigError` naming the key, the file that set it and the closest valid keys,
before any model, data or output folder is touched.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Dict,
    Iterable,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.core import resources
from framework.core.errors import ConfigError, RegistryError
from framework.core.registry import REGISTRIES
from framework.core.schema import Length, PartOf, Range


def _package_dir(name: str) -> str:
    """``${pkg:name}``: the folder of an installed Python package (for files shipped inside packages)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"${{pkg:{name}}}: no installed package {name!r}; pip install it or give a path")
    return str(Path(list(spec.submodule_search_locations)[0]))


if not OmegaConf.has_resolver("pkg"):
    OmegaConf.register_resolver("pkg", _package_dir)


class DatasetsOf:
    """Marks the ``datasets:`` section: ``{entry: {...overrides}}``, each merged onto ``datasets_cfg/<entry>.yaml``."""


Origins = Dict[str, str]


# ----------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]} (key {getattr(e, 'full_key', '?')})") from None
    if cfg is None or isinstance(cfg, ListConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, got "
                          f"{'nothing' if cfg is None else 'a list'}")
    return cfg


def _record_origins(node: Any, prefix: str, source: str, origins: Origins) -> None:
    if isinstance(node, DictConfig):  # as written: an interpolation is resolved once the whole config is merged
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            origins[path] = source
            _record_origins(value, path, source, origins)


def load_file(path: str | Path, origins: Optional[Origins] = None, _stack: Tuple[Path, ...] = ()) -> DictConfig:
    """Load ``path`` with its ``_base_`` chain merged in; record which file set each key in ``origins``."""
    path = Path(path).expanduser().resolve()
    origins = {} if origins is None else origins
    if path in _stack:
        chain = " -> ".join(str(p) for p in _stack + (path,))
        raise ConfigError(f"_base_ cycle: {chain}")
    if not path.is_file():
        including = f" (named in _base_ of {_stack[-1]})" if _stack else ""
        raise ConfigError(f"config file {path} does not exist{including}")
    own = _read_yaml(path)
    bases = own.pop("_base_", None) if "_base_" in own else None
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, ListConfig) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {OmegaConf.to_yaml(bases)!r}")
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, load_file(path.parent / base, origins, _stack + (path,)))
    merged, own = _apply_deletes(merged, own)
    _record_origins(own, "", str(path), origins)
    return OmegaConf.merge(merged, own)


def _apply_deletes(base: DictConfig, own: DictConfig) -> Tuple[DictConfig, DictConfig]:
    """A mapping of ``own`` marked ``_delete_: true`` replaces the base's mapping instead of merging into it."""
    plain_base = OmegaConf.to_container(base, resolve=False)
    plain_own = OmegaConf.to_container(own, resolve=False)

    def walk(b: Dict[str, Any], o: Dict[str, Any]) -> None:
        for key, value in o.items():
            if not isinstance(value, dict):
                continue
            if value.pop("_delete_", False):
                b.pop(key, None)
            elif isinstance(b.get(key), dict):
                walk(b[key], value)
            else:
                walk({}, value)  # drop markers below a key the base does not have

    walk(plain_base, plain_own)
    return OmegaConf.create(plain_base), OmegaConf.create(plain_own)


def apply_options(cfg: DictConfig, options: Sequence[str], origins: Origins) -> DictConfig:
    """Apply ``a.b=c`` overrides (values typed as YAML) onto ``cfg``, in order; ``a.b[1]=c`` sets one item of a
    list."""
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options {opt!r}: expected key=value, e.g. run.max_iters=100")
        key = opt.split("=", 1)[0]
        if "[" in key:
            cfg = _set_item(cfg, opt)
            origins[re.sub(r"\[\d+\]$", "", key)] = "--options"
            continue
        try:
            over = OmegaConf.from_dotlist([opt])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"--options {opt}: cannot parse: {str(e).splitlines()[0]}") from None
        cfg, over = _apply_deletes(cfg, over)
        _record_origins(over, "", "--options", origins)
        try:
            cfg = OmegaConf.merge(cfg, over)
        except OmegaConfBaseException as e:
            raise ConfigError(f"--options {opt}: cannot apply it ({str(e).splitlines()[0]}); a section is "
                              f"replaced by a mapping, a list by a list") from None
    return cfg


def _set_item(cfg: DictConfig, opt: str) -> DictConfig:
    """``--options a.b[i]=value``: item ``i`` of an existing list ``a.b``."""
    key, text = opt.split("=", 1)
    m = re.fullmatch(r"([\w.]+)\[(\d+)\]", key)
    if m is None:
        raise ConfigError(f"--options {opt}: an indexed key is written section.list[index]=value, e.g. "
                          f"run.eval_splits[0]=val")
    path, index = m.group(1), int(m.group(2))
    items = OmegaConf.select(cfg, path, default=None, throw_on_resolution_failure=False)
    if items is None:
        raise ConfigError(f"--options {opt}: {path} is not set in the config (its default applies), so it has no "
                          f"item {index}; set the whole list, e.g. {path}=[a, b]")
    if not isinstance(items, ListConfig):
        raise ConfigError(f"--options {opt}: {path} is not a list in the config (it is {items!r}); set the whole "
                          f"value, e.g. {path}=[a, b]")
    if index >= len(items):
        raise ConfigError(f"--options {opt}: {path} has {len(items)} items (indices 0 to {len(items) - 1}); "
                          f"set the whole list to add one, e.g. {path}=[...]")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--options {opt}: cannot parse the value: {e}") from None
    items[index] = value
    return cfg


def load_config(path: str | Path, options: Sequence[str] = ()) -> Tuple[Dict[str, Any], Origins]:
    """Load a config file, apply overrides and resolve interpolations; returns (plain dict, origins)."""
    origins: Origins = {}
    cfg = apply_options(load_file(path, origins), options, origins)
    return resolve(cfg, origins), origins


def resolve(cfg: DictConfig, origins: Origins) -> Dict[str, Any]:
    """Interpolations resolved over the whole merged config (a key may refer to one set in another file); a
    failure names the key, the file that set it and the cause."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        cause = str(e).splitlines()[0].replace("KeyError raised while resolving interpolation: ", "")
        raise ConfigError(f"{key}: cannot resolve its interpolation: {cause} (set in "
                          f"{_origin_of(key, origins)})") from None


@dataclasses.dataclass
class _Field:
    type: Any
    default: Any = dataclasses.MISSING
    doc: str = ""


def _origin_of(path: str, origins: Origins) -> str:
    while path:
        if path in origins:
            return origins[path]
        path = path.rpartition(".")[0]
    return "the schema defaults"


class _Validator:
    def __init__(self, origins: Origins) -> None:
        self.origins = origins

    def error(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}: {msg} (set in {_origin_of(path, self.origins)})")

    # -- types
    def check(self, value: Any, tp: Any, path: str) -> Any:
        if tp is Any or tp is inspect.Parameter.empty:
            return value
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            for meta in args[1:]:
                if isinstance(meta, PartOf):
                    return self.part(meta.kind, value, path)
                if isinstance(meta, DatasetsOf):
                    return self.datasets(value, path)
            value = self.check(value, args[0], path)
            for meta in args[1:]:
                problem = meta.problem(value) if isinstance(meta, (Range, Length)) else None
                if problem:
                    raise self.error(path, problem)
            return value
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.check(value, arg, path)
                except ConfigError as e:
                    errors.append(e)
            if len(errors) == 1:
                raise errors[0]
            raise self.error(path, f"expected {_type_name(tp)}, got {value!r}")
        if origin is Literal:
            if value not in args:
                # YAML reads off/on/no/yes unquoted as booleans: say so, or `run.amp=off` is a riddle
                words = [a for a in args if isinstance(a, str) and a.lower() in ("off", "on", "no", "yes")]
                hint = (f" (YAML reads an unquoted {words[0]} as {value}: quote it, {path.split('.')[-1]}: "
                        f"'{words[0]}')" if isinstance(value, bool) and words else "")
                raise self.error(path, f"expected one of {', '.join(map(repr, args))}, got {value!r}{hint}")
            return value
        if origin in (list, List, tuple, Sequence, typing.Sequence):
            if not isinstance(value, (list, tuple)):
                raise self.error(path, f"expected a list, got {value!r}")
            item = args[0] if args else Any
            return [self.check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin in (dict, Dict):
            if not isinstance(value, dict):
                raise self.error(path, f"expected a mapping, got {value!r}")
            item = args[1] if len(args) == 2 else Any
            return {k: self.check(v, item, f"{path}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            return tp(**self.fields(value, dataclass_fields(tp), path, tp.__name__))
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp in (list, tuple):
            if isinstance(value, (list, tuple)):
                return list(value)
        elif isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise self.error(path, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    def fields(self, value: Any, schema: Dict[str, _Field], path: str, owner: str) -> Dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(path or "<root>", f"expected a mapping of {owner} keys, got {value!r}")
        for key in value:
            if key not in schema:
                close = difflib.get_close_matches(str(key), list(schema), n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                kp = f"{path}.{key}" if path else str(key)
                raise self.error(kp, f"unknown key {key!r} for {owner}; {hint}valid keys: {', '.join(schema)}")
        out = {}
        for name, f in schema.items():
            kp = f"{path}.{name}" if path else name
            if name in value:
                out[name] = self.check(value[name], f.type, kp)
            elif f.default is dataclasses.MISSING:
                raise self.error(kp, f"missing required key {name!r} for {owner}")
            else:
                out[name] = f.default
        return out

    def part(self, kind: str, value: Any, path: str) -> Dict[str, Any]:
        registry = REGISTRIES[kind]
        if not isinstance(value, dict) or "name" not in value:
            raise self.error(path, f"a {kind} section needs 'name: <one of {', '.join(registry.names())}>'")
        try:
            target = registry.get(value["name"])
        except RegistryError as e:
            raise self.error(f"{path}.name", str(e)) from None
        schema = {k: _Field(tp, default) for k, (tp, default) in registry.reserved.items()}
        schema.update(signature_fields(target, registry.injected))
        body = {k: v for k, v in value.items() if k != "name"}
        return {"name": value["name"], **self.fields(body, schema, path, f"{kind} {value['name']!r}")}

    def datasets(self, value: Any, path: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of dataset entries, got {value!r}")
        return {name: self.dataset_entry(name, entry or {}, f"{path}.{name}") for name, entry in value.items()}

    def dataset_entry(self, name: str, entry: Dict[str, Any], path: str) -> Dict[str, Any]:
        cfg_file = resources.root() / "datasets_cfg" / f"{name}.yaml"
        if cfg_file.is_file():
            sub_origins: Origins = {}
            defaults = resolve(load_file(cfg_file, sub_origins), sub_origins)
            for k, v in sub_origins.items():
                self.origins.setdefault(f"{path}.{k}", v)
            entry = OmegaConf.to_container(OmegaConf.merge(defaults, entry), resolve=True)
        builder = entry.get("builder", name)
        if builder not in REGISTRIES["dataset"]:
            known = ", ".join(REGISTRIES["dataset"].names())
            raise self.error(path, f"dataset {name!r} has no datasets_cfg entry ({cfg_file} does not exist) "
                                   f"and no 'builder:' key naming a registered dataset builder ({known})")
        spec = {k: v for k, v in entry.items() if k != "builder"}
        spec["name"] = builder
        built = self.part("dataset", spec, path)
        built["builder"] = built.pop("name")
        return built


def dataclass_fields(cls: type) -> Dict[str, _Field]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out[f.name] = _Field(hints[f.name], default, f.metadata.get("doc", ""))
    return out


def signature_fields(fn: Any, injected: Iterable[str] = ()) -> Dict[str, _Field]:
    """The config schema of a registered callable: its keyword parameters, their hints and defaults."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotation: still validate key names
        hints = {}
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if name == "self" or name in injected or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = dataclasses.MISSING if p.default is p.empty else p.default
        out[name] = _Field(hints.get(name, Any), default)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def validate(cfg: Dict[str, Any], schema: type, origins: Origins) -> Any:
    """Check ``cfg`` against dataclass ``schema``; return the schema instance with defaults filled in."""
    return _Validator(origins).check(cfg, schema, "")


def to_plain(obj: Any) -> Any:
    """A validated config (dataclasses, dicts, lists) as plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(obj)))


def config_changes(before: str, after: str) -> Dict[str, tuple]:
    """Dotted key -> (value before, value after) for every leaf that differs between two configs' YAML."""
    def flat(node: Any, prefix: str = "") -> Dict[str, Any]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    a, b = flat(yaml.safe_load(before) or {}), flat(yaml.safe_load(after) or {})
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
