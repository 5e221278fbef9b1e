"""``python -m framework.parts [kind]``: every registered part (of one kind, or of all) with its config keys, their
types, ranges and defaults, read from the same schema that validates a config.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Dict, List, Optional

from framework.commands.cli import exit_status
from framework.core.config import dataclass_fields, signature_fields
from framework.core.errors import RegistryError
from framework.core.registry import REGISTRIES, discover_plugins
from framework.core.schema import Length, PartOf, Range


def describe(kind: Optional[str] = None) -> str:
    """Every registered part (of ``kind``, or of every kind) with its config keys, types and defaults: what
    ``python -m framework.parts [kind]`` prints."""
    discover_plugins()
    if kind is not None and kind not in REGISTRIES:
        raise RegistryError(f"no registry {kind!r}; the kinds: {', '.join(REGISTRIES)}")
    lines = []
    for k in [kind] if kind else list(REGISTRIES):
        registry = REGISTRIES[k]
        lines.append(f"{k} ({len(registry.names())} registered)")
        for name in registry.names():
            target = registry.get(name)
            lines.append(f"  {name}    [{target.__module__.replace('.', '/')}.py]")
            lines += _key_lines(signature_fields(target, registry.injected), "      ")
    return "\n".join(lines)


def _key_lines(fields: Dict[str, Any], indent: str) -> List[str]:
    """``key: type = default`` per field; a section given by a dataclass (``qformer: QFormerArgs``) key by key."""
    out = []
    for key, f in fields.items():
        if dataclasses.is_dataclass(f.type):
            out.append(f"{indent}{key}:")
            out += _key_lines(dataclass_fields(f.type), indent + "  ")
            continue
        default = "required" if f.default is dataclasses.MISSING else f"= {f.default!r}"
        out.append(f"{indent}{key}: {_type_text(f.type)} {default}")
    return out


def _type_text(tp: Any) -> str:
    """A config key's type as a person reads it: ``int >= 1``, ``float in [0, 1) | None``, ``Part(llm)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        marks = [m for m in args[1:] if isinstance(m, (Range, Length, PartOf))]
        for m in marks:
            if isinstance(m, PartOf):
                return f"Part({m.kind})"
        return " ".join([_type_text(args[0])] + [m.describe() for m in marks])
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " | ".join("None" if a is type(None) else _type_text(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m framework.parts [kind]``."""
    argv = sys.argv[1:] if argv is None else argv

    def listing() -> int:
        print(describe(argv[0] if argv else None))
        return 0

    return exit_status(listing)


if __name__ == "__main__":
    sys.exit(main())
