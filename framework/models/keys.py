"""Key tables: how one module's weights are named in another code base, written once and read both ways.

A :class:`KeyTable` is a list of rules ``(theirs, ours)``, each a tuple of state-dict keys, saying that the
concatenation along dim 0 of the ``theirs`` tensors equals that of the ``ours`` tensors:

* one key each side: a rename (``attention.output.dense.weight`` <-> ``attn_out.dense.weight``);
* several equal parts on one side: a fused projection (BERT's separate query/key/value <-> our ``qkv``);
* ``None`` for a part one side stores as zeros and the other does not store at all (transformers' EVA ``qkv``
  bias holds a zero key bias; EVA keeps only the query and value biases): written as zeros, dropped on reading.

Reading (``to_ours``) and writing (``to_theirs``) use the same rules, so a table cannot be right one way and wrong
the other, and a round trip is the identity (tested per table). A rule whose source keys are all absent is
skipped (a stage-2 Q-Former has no text path, most layers no cross-attention); one with some but not all of
them present is an error naming what is missing. Source keys no rule takes are returned, for the caller to
report or refuse; the caller then checks the result against the model it must fit (strict, by name and shape).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch

from framework.core.errors import CheckpointError

Keys = Tuple[Optional[str], ...]
State = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class KeyTable:
    rules: Tuple[Tuple[Keys, Keys], ...] = ()

    @staticmethod
    def of(pairs: Iterable[Tuple[Sequence[Optional[str]] | str, Sequence[Optional[str]] | str]]) -> "KeyTable":
        """Rules from ``(theirs, ours)`` pairs; a plain string is a one-key side."""
        as_keys = (lambda side: (side,) if isinstance(side, str) else tuple(side))
        return KeyTable(tuple((as_keys(t), as_keys(o)) for t, o in pairs))

    def __add__(self, other: "KeyTable") -> "KeyTable":
        return KeyTable(self.rules + other.rules)

    def within(self, theirs: str, ours: str) -> "KeyTable":
        """The same table one level down: every key of theirs prefixed by ``theirs``, of ours by ``ours``."""
        pre = (lambda prefix, keys: tuple(None if k is None else prefix + k for k in keys))
        return KeyTable(tuple((pre(theirs, t), pre(ours, o)) for t, o in self.rules))

    def renamed(self, replacements: Sequence[Tuple[str, Optional[str]]]) -> "KeyTable":
        """Their key names rewritten by ordered ``(old, new)`` substring replacements, for a code base that spells
        the same module differently; ``new=None`` drops the rules whose keys contain ``old`` (a part they do not
        have)."""
        rules = []
        for theirs, ours in self.rules:
            if any(k is not None and old in k for k in theirs for old, new in replacements if new is None):
                continue
            renamed = []
            for k in theirs:
                for old, new in replacements:
                    k = k if k is None or new is None else k.replace(old, new)
                renamed.append(k)
            rules.append((tuple(renamed), ours))
        return KeyTable(tuple(rules))

    def to_ours(self, state: State, what: str, error: Type[Exception] = CheckpointError) -> Tuple[State, List[str]]:
        """``state`` in their names -> (ours, their keys no rule took, sorted). ``what`` names the source in errors."""
        return self._apply(state, reverse=False, what=what, error=error)

    def to_theirs(self, state: State, what: str, error: Type[Exception] = CheckpointError) -> Tuple[State, List[str]]:
        """``state`` in our names -> (theirs, our keys no rule took, sorted)."""
        return self._apply(state, reverse=True, what=what, error=error)

    def _apply(self, state: State, reverse: bool, what: str, error: Type[Exception]) -> Tuple[State, List[str]]:
        out: State = {}
        used, missing = set(), []
        for theirs, ours in self.rules:
            src, dst = (ours, theirs) if reverse else (theirs, ours)
            present = [k for k in src if k is not None and k in state]
            if not present:
                continue
            absent = [k for k in src if k is not None and k not in state]
            if absent:
                missing.append(f"{', '.join(absent)} (needed with {present[0]})")
                continue
            used.update(present)
            parts = [state[k] for k in src if k is not None]
            if len(parts) < len(src):  # a zero part: as large as the parts beside it
                parts = [torch.zeros_like(parts[0]) if k is None else state[k] for k in src]
            whole = parts[0] if len(parts) == 1 else torch.cat(parts)
            for key, piece in zip(dst, whole.chunk(len(dst)) if len(dst) > 1 else (whole,)):
                if key is not None:
                    out[key] = piece
        if missing:
            raise error(f"{what} lacks {'; '.join(missing[:6])}; keys with no place: "
                        f"{', '.join(sorted(set(state) - used)[:6]) or 'none'}")
        return out, sorted(set(state) - used)


def linear(theirs: str, ours: str) -> KeyTable:
    """A layer with a weight and a bias (Linear, LayerNorm) under another name."""
    return KeyTable.of((f"{theirs}.{p}", f"{ours}.{p}") for p in ("weight", "bias"))


def fused(theirs: Sequence[Optional[str]], ours: Sequence[Optional[str]]) -> KeyTable:
    """Layers concatenated on one side (weights and biases): ``fused(["q", "k", "v"], ["qkv"])``."""
    with_suffix = (lambda names, p: [None if n is None else f"{n}.{p}" for n in names])
    return KeyTable.of((with_suffix(theirs, p), with_suffix(ours, p)) for p in ("weight", "bias"))


def layer_indices(state: State, prefix: str) -> List[int]:
    """The ``i`` of every ``{prefix}{i}.`` key, sorted: how many blocks a state dict holds."""
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
