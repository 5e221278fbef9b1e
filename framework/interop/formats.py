"""What a foreign weights format (LAVIS, transformers...) offers the converter, and the check of what it wrote.

A format is a registered part (``framework.core.registry.FORMATS``, one file per format in ``plugins/formats/``)
holding the key tables of the modules it describes, used in both directions (:mod:`framework.models.keys`).
``python -m framework.convert`` (:mod:`framework.commands.convert`) is the command around them and names none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from framework.core import checkpoint
from framework.core.config import apply_options, resolve
from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.core.registry import FORMATS
from framework.engine.experiment import load_experiment, load_model_file
from framework.models.build import build_model
from framework.models.image_encoder import ImageEncoder
from framework.models.llm import LLMAdapter


@dataclass
class Converted:
    """What :meth:`Format.read` wrote into ``out``: the ``model:`` section that builds the network the weights
    are for (its files pointing into ``out``), tensors per part, and every source key left out with the reason."""
    model: Dict[str, Any]
    counts: Dict[str, int]
    left_out: Dict[str, str] = field(default_factory=dict)
    # what the user must still give before the output builds (e.g. the LLM folder a LAVIS file does not hold)
    needs: List[str] = field(default_factory=list)


class Format:
    """Base class of the registered formats. ``read`` converts their files into ours; ``write`` ours into theirs.
    Either may be missing (a format only read raises :class:`NotImplementedError` from ``write``)."""

    reads: str = ""   # what --src is for --from this format (help text)
    writes: str = ""  # what --out holds for --to this format; empty: not written
    # whether its files hold the LLM's weights: LoRA adapters are then merged into them; else a model with
    # adapters is refused (they would be lost)
    writes_llm: bool = False

    def read(self, src: Path, out: Path) -> Converted:
        raise NotImplementedError

    def write(self, model: nn.Module, spec: Dict[str, Any], out: Path) -> None:
        """``model`` built from the model section ``spec`` (its registered name under ``name``)."""
        raise NotImplementedError


def split_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The keys under ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_builds(spec: Dict[str, Any]) -> nn.Module:
    """Build the validated model section ``spec`` on the meta device (no weights read: any size, no memory) and
    check that every file the conversion wrote fits it, by key and shape: the checkpoint (``model.checkpoint``)
    and each image encoder's weights. Raises naming the misfit; returns the meta model."""
    args = dict(spec)
    ckpt = args.pop("checkpoint", None)
    with torch.device("meta"):
        model = build_model(args)
    if ckpt:
        checkpoint.check_fits(model, checkpoint.load(ckpt), ckpt)
    for module in model.modules():
        if isinstance(module, ImageEncoder) and module.checkpoint:
            module.fitting_weights(module.checkpoint)
    return model


def read_into_ours(source: str, src: Path, out: Path, options: List[str]) -> Path:
    """``--from source --to ours``: convert, write ``model.yaml`` (``options`` applied), check it builds."""
    converted: Converted = FORMATS.get(source)().read(src, out)
    origins = {}
    cfg = resolve(apply_options(OmegaConf.create({"model": converted.model}), options, origins), origins)
    model_yaml = out / "model.yaml"
    model_yaml.write_text(f"# converted from {src} by python -m framework.convert --from {source}\n"
                          + yaml.safe_dump(cfg, sort_keys=False))
    print(f"converted {src} -> {out}")
    for part, n in converted.counts.items():
        print(f"  {part:12s} {n:6d} tensors")
    for reason in sorted(set(converted.left_out.values())):
        keys = [k for k, r in converted.left_out.items() if r == reason]
        print(f"  left out, {reason}: {len(keys)} keys ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    given = {o.split("=", 1)[0] for o in options}
    needs = [n for n in converted.needs if n.split(":", 1)[0] not in given]
    if any(n.startswith("model.llm.path") for n in needs):  # the model cannot be built without it
        print(f"written, not yet checked: {model_yaml} needs\n  " + "\n  ".join(needs)
              + "\nrerun with --options KEY=VALUE for each, or set them in your config")
        return model_yaml
    check_builds(load_model_file(model_yaml))
    print(f"checked: {model_yaml} builds and every written file fits it")
    for n in needs:
        print(f"before use, set {n}")
    print(f"use it: _base_: {model_yaml}")
    return model_yaml


def write_from_ours(target: str, experiment: str, out: Path, options: List[str]) -> None:
    """``--from ours --to target``: build the experiment's model (``model.checkpoint`` loaded) and write it."""
    exp = load_experiment(experiment, options)
    fmt = FORMATS.get(target)()
    model = build_model(exp.model)
    adapted = [m for m in model.modules() if isinstance(m, LLMAdapter) and m.lora is not None]
    if adapted and not fmt.writes_llm:
        raise ConfigError(f"--to {target}: the model's LLM has LoRA adapters (model.llm.lora) and {target}'s files "
                          f"hold no LLM weights, so the adapters would be lost; write --to hf (the adapters merged into "
                          f"the LLM's weights) or keep this framework's checkpoint")
    for llm in adapted:
        llm.merge_lora()
        logger.info("--to %s: the LLM's LoRA adapters merged into its weights", target)
    fmt.write(model, exp.model, out)
