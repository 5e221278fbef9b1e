"""Build the configured model and describe it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from framework.core import checkpoint
from framework.core.registry import build
from framework.data.builder import DataFile
from framework.models.interfaces import RemovesParts


def building_on_meta() -> bool:
    """Whether parts are being built on the ``meta`` device (``--dry-run``, real-size tests): the architecture
    only, no file read, no weights loaded. The one check every part uses."""
    return torch.empty(0).is_meta


def build_model(spec: Dict[str, Any]) -> nn.Module:
    """Build ``model:`` (``{name, checkpoint, **args}``); load ``checkpoint``'s weights unless on ``meta``."""
    args = dict(spec)
    ckpt = args.pop("checkpoint", None)
    model = build("model", args)
    if ckpt and not building_on_meta():
        checkpoint.load_model_weights(model, checkpoint.load(ckpt), ckpt)
    return model


def checkpoint_of(model: nn.Module, model_name: str, **state: Any) -> Dict[str, Any]:
    """:func:`framework.core.checkpoint.make` for a built model: its trainable weights, its frozen parts left out, the
    parts it deleted named (:class:`framework.models.interfaces.RemovesParts`)."""
    absent = list(model.removed) if isinstance(model, RemovesParts) else []
    return checkpoint.make(model_name, checkpoint.trainable_state_dict(model), checkpoint.frozen_prefixes(model),
                           absent=absent, **state)


def compile_parts(model: nn.Module, backend: str) -> None:
    """``torch.compile`` each child module of ``model`` in place (``run.compile``). The parts, not the model: a
    model's ``forward`` samples negatives, tokenizes and loops over decoding steps in Python, which would break
    its graph or retrace per batch; each part's forward is tensors in, tensors out. In place
    (``nn.Module.compile``), so parameter names, checkpoints and DDP see the model unchanged."""
    for child in model.children():
        child.compile(backend=backend)


def weight_files(model: nn.Module, spec: Dict[str, Any]) -> List[DataFile]:
    """Files the model reads when built for real: ``model.checkpoint`` and every ``weight_files`` a part
    declares (an encoder's pretrained weights, the Q-Former's BERT folder)."""
    files = [DataFile(Path(spec["checkpoint"]), "model.checkpoint")] if spec.get("checkpoint") else []
    for module in model.modules():
        files += getattr(module, "weight_files", [])
    return files


def parameter_table(model: nn.Module) -> str:
    """Parameters per top-level part, total and trainable."""
    rows = []
    for name, child in model.named_children():
        total = sum(p.numel() for p in child.parameters())
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        rows.append((name, total, trainable))
    own = [p for n, p in model.named_parameters(recurse=False)]
    if own:
        rows.append(("(own)", sum(p.numel() for p in own), sum(p.numel() for p in own if p.requires_grad)))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'part':<{width}}  {'parameters':>15}  {'trainable':>15}"]
    lines += [f"{n:<{width}}  {t:>15,}  {tr:>15,}" for n, t, tr in rows]
    lines.append(f"{'total':<{width}}  {total:>15,}  {trainable:>15,}")
    return "\n".join(lines)
