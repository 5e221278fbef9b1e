"""The markers a part's signature uses beyond plain types: ``Part("kind")`` (a nested part), ``Range`` (a
number's bounds), ``Length`` (a list's). :mod:`framework.core.config` checks them before any work."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

from framework.core.registry import REGISTRIES


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
