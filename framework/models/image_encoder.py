"""What every image encoder plugin shares: freezing, storage precision, size checks and weight loading.

Contract: ``forward(images[B,3,H,W]) -> tokens[B,N,D]`` and ``num_features`` (= D).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Tuple

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from framework.core.checkpoint import FORMAT, read_weights
from framework.core.errors import CheckpointError, ConfigError, WeightLoadError
from framework.core.logs import logger
from framework.core.registry import build
from framework.core.schema import Range
from framework.data.builder import DataFile
from framework.models.build import building_on_meta
from framework.models.frozen import FreezablePart, hold_in_eval
from framework.models.interfaces import ImageEncoderPart, missing

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KeyMap = Callable[[Dict[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], Dict[str, str]]]


def build_image_encoder(spec: Dict[str, Any]) -> nn.Module:
    """Build the registered image encoder ``spec`` and check it keeps the contract every model relies on
    (:class:`framework.models.interfaces.ImageEncoderPart`)."""
    encoder = build("image_encoder", spec)
    lacks = missing(encoder, ImageEncoderPart)
    if lacks:
        raise ConfigError(f"image encoder {spec.get('name')!r} ({type(encoder).__name__}) lacks {', '.join(lacks)}: "
                          f"every image encoder sets num_features (its token width) and frozen (whether its weights "
                          f"stay fixed); see framework/models/interfaces.py")
    if encoder.frozen:  # whatever the plugin did itself: no gradients, and in eval mode for good
        encoder.requires_grad_(False)
        if not isinstance(encoder, FreezablePart):
            hold_in_eval(encoder)
    return encoder


def example_images(encoder: nn.Module, batch_size: int) -> torch.Tensor:
    """What a batch's ``image`` holds for ``encoder`` (a model's ``example_batch``): images of its size (224 if it
    declares none) or, from the feature cache, its tokens."""
    if getattr(encoder, "cached", False):
        return torch.empty(batch_size, encoder.num_tokens, encoder.num_features, dtype=torch.bfloat16)
    size = getattr(encoder, "image_size", 224)
    return torch.empty(batch_size, 3, size, size)


def exact_mlp_ratio(mlp_dim: int, width: int) -> float:
    """The ``mlp_ratio`` for timm that builds exactly ``mlp_dim`` hidden units: timm takes ``int(width * ratio)``,
    and ``mlp_dim / width`` can land a hair below (44 x (120 / 44) = 119.99...: 119 units, and a checkpoint of 120
    does not load). Half a unit above, truncation gives ``mlp_dim`` for any width."""
    return (mlp_dim + 0.5) / width


def resolve_sizes(presets: Dict[str, Dict[str, int]], preset: str, **given: Optional[int]) -> Dict[str, int]:
    """Architecture sizes: the preset's, with every size given explicitly (not None) taking precedence."""
    return {**presets[preset], **{k: v for k, v in given.items() if v is not None}}


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightLoadError(f"image encoder weights {path} do not exist (model.image_encoder.checkpoint): put the "
                              f"file there, point the key at it, or set it to null for random weights")
    try:
        state = read_weights(path, "image encoder weights (model.image_encoder.checkpoint)")
    except CheckpointError as e:
        raise WeightLoadError(str(e)) from None
    if state.get("format") == FORMAT:
        return state
    for wrapper in ("model", "state_dict", "module"):  # checkpoints that nest the weights one level down
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


class ImageEncoder(FreezablePart):
    """A timm vision transformer whose final norm is removed: the tokens of its last kept block.

    Subclasses (the registered plugins) give ``PRESETS`` (architecture sizes by preset name), ``build_vit``
    and ``key_map`` (their checkpoints' key names -> ours). Arguments, shared by every such plugin:

    image_size: input resolution (224 in pretraining; 364 or 490 when fine-tuning: the position embeddings
        of loaded weights are interpolated).
    preset: ``full`` (the paper's encoder) or ``tiny`` (2 blocks, 64 wide: the same code at test size).
    patch_size, width, depth, heads, mlp_dim: architecture; each given one overrides the preset.
    drop_path: stochastic depth (only matters when trainable).
    grad_checkpointing: keep no block's activations for the backward pass; recompute them there (LAVIS's
        ``use_grad_checkpoint``, which its fine-tuning configs set when they train the encoder): much less
        memory for about a third more compute. A frozen encoder keeps no activations anyway.
    freeze: no gradients, always in eval mode, run under ``no_grad``, stored in ``precision``.
    checkpoint: a local weights file (the plugin's key names, or one of our checkpoints holding the encoder);
        null: random initialisation.
    cached: read this encoder's output tokens from the frozen-feature cache that
        ``python -m framework.cache_features`` wrote, instead of running it on images: the transformer is not
        built at all. Refused (with the reason) when the training split augments randomly or the cache was
        made by another encoder, checkpoint, precision or image processing (a fingerprint).
    cache_dir: the framework's cache folder (as every ``cache_dir`` key: default ``$BLIP2_CACHE``, else
        ``~/.cache/blip2_framework``); the features are in its ``features/<entry>/<split>``.
    """

    PRESETS: Dict[str, Dict[str, int]] = {}

    def __init__(self, image_size: Annotated[int, Range(1)] = 224, preset: Literal["full", "tiny"] = "full",
                 patch_size: Optional[Annotated[int, Range(1)]] = None, width: Optional[Annotated[int, Range(1)]] = None,
                 depth: Optional[Annotated[int, Range(1)]] = None, heads: Optional[Annotated[int, Range(1)]] = None,
                 mlp_dim: Optional[Annotated[int, Range(1)]] = None,
                 drop_path: Annotated[float, Range(0, 1, hi_open=True)] = 0.0, grad_checkpointing: bool = False,
                 freeze: bool = True, precision: Precision = "fp16", checkpoint: Optional[str] = None,
                 cached: bool = False, cache_dir: Optional[str] = None) -> None:
        super().__init__()
        sizes = resolve_sizes(self.PRESETS, preset, patch_size=patch_size, width=width, depth=depth, heads=heads,
                              mlp_dim=mlp_dim)
        if sizes["width"] % sizes["heads"]:
            raise ConfigError(f"model.image_encoder: width {sizes['width']} is not a multiple of heads {sizes['heads']}")
        if image_size % sizes["patch_size"]:
            raise ConfigError(f"model.image_encoder: image_size {image_size} is not a multiple of patch_size "
                              f"{sizes['patch_size']}")
        self.image_size, self.num_features, self.frozen, self.cached = image_size, sizes["width"], freeze, cached
        self.checkpoint, self.depth = None if cached else checkpoint, sizes["depth"]
        self._layer_ids: Optional[Dict[str, int]] = None  # parameter name -> layer, made on first use
        self.cache_dir = Path(cache_dir or os.environ.get("BLIP2_CACHE", "~/.cache/blip2_framework")).expanduser() \
            / "features"
        self.num_tokens = (image_size // sizes["patch_size"]) ** 2 + 1
        self.identity = {"encoder": type(self).__name__, "image_size": image_size, **sizes, "precision": precision,
                         "checkpoint": _file_identity(checkpoint)}
        self.weight_files = [DataFile(Path(checkpoint).expanduser(), "image encoder weights")] \
            if checkpoint and not cached else []
        if cached:
            if not freeze:
                raise ConfigError("image_encoder.cached needs a frozen encoder (freeze: true): a trained encoder's "
                                 "features change every step")
            self.vit = None
            return
        vit = self.build_vit(image_size, drop_path, **sizes)
        vit.norm = nn.Identity()
        vit.set_grad_checkpointing(grad_checkpointing)  # timm's: each block under torch.utils.checkpoint
        self.vit = vit
        if checkpoint and not building_on_meta():
            self.load_pretrained(checkpoint)
        if freeze:
            self.requires_grad_(False)
            self.to(DTYPES[precision])
            self.eval()

    def build_vit(self, image_size: int, drop_path: float, patch_size: int, width: int, depth: int, heads: int,
                  mlp_dim: int) -> nn.Module:
        raise NotImplementedError

    def key_map(self, depth: int) -> KeyMap:
        raise NotImplementedError

    recompute_layers = False  # FSDP shards the blocks one by one; recomputing them is grad_checkpointing

    def fsdp_layers(self) -> List[nn.Module]:
        return [] if self.vit is None else list(self.vit.blocks)

    @property
    def num_layers(self) -> int:
        """Transformer blocks, for layer-wise lr decay (``run.optimizer.layer_decay``); none when cached."""
        return 0 if self.vit is None else len(self.vit.blocks)

    def layer_id(self, name: str) -> int:
        """The layer of parameter ``name`` (relative to this encoder) for layer-wise lr decay, by timm's own
        grouping of the ViT (``group_matcher``): 0 the embeddings, i + 1 block i, ``num_layers`` + 1 the rest."""
        if self._layer_ids is None:
            from timm.models import group_parameters

            groups = group_parameters(self.vit, self.vit.group_matcher(coarse=False))
            self._layer_ids = {f"vit.{n}": min(i, self.num_layers + 1) for i, names in groups.items() for n in names}
        return self._layer_ids.get(name, self.num_layers + 1)

    def fingerprint(self, image_processors: Any) -> Dict[str, Any]:
        """What a cache of this encoder's tokens depends on: architecture, weights file, precision, and the image
        processing of the split (``image_processors``: its processor specs)."""
        return {**self.identity, "image_processors": image_processors}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self._cached_tokens(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(f"image encoder built for {self.image_size}x{self.image_size} images got "
                             f"{tuple(images.shape[-2:])}; set the encoder's image_size to the processor's size "
                             f"(position embeddings are interpolated when weights are loaded) or resize the images")
        dtype = self.vit.pos_embed.dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.vit.forward_features(images.to(dtype))

    def _cached_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        want = (self.num_tokens, self.num_features)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != want:
            raise ValueError(f"image_encoder.cached: expected cached tokens [B, {want[0]}, {want[1]}], got "
                             f"{tuple(tokens.shape)}: the batch holds images, not cached features (is the data set's "
                             f"cache attached?)")
        return tokens

    def load_pretrained(self, path: str) -> None:
        """Load the weights file ``path`` (see :meth:`fitting_weights`)."""
        own = self.state_dict()
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in self.fitting_weights(path).items()})

    def fitting_weights(self, path: str) -> Dict[str, torch.Tensor]:
        """The weights of ``path`` in our names, checked to fit this encoder by name and shape (also on the meta
        device, where nothing is loaded): through :meth:`key_map` (the source's key names -> ours, with the reason
        for every key left out), position embeddings interpolated to this ``image_size``. ``path`` may also be one
        of our own checkpoints of a model holding this encoder (e.g. the demo's ``attribute_classifier``): its
        ``...vit.*`` weights are taken as they are."""
        state = read_state_dict(path)
        if state.get("format") == FORMAT:
            weights = state["model"]
            ours = {k: k[k.index("vit."):] for k in weights if k.startswith("vit.") or ".vit." in k}
            mapped = {new: weights[k] for k, new in ours.items()}
            dropped = {k: "not part of the image encoder" for k in weights if k not in ours}
            if not mapped:
                raise WeightLoadError(f"checkpoint {path} holds no image encoder weights (no '...vit.' keys)")
        else:
            mapped, dropped = self.key_map(self.depth)(state)
        if "vit.pos_embed" in mapped and mapped["vit.pos_embed"].shape != self.vit.pos_embed.shape:
            grid = self.image_size // self.vit.patch_embed.patch_size[0]
            mapped["vit.pos_embed"] = resample_abs_pos_embed(mapped["vit.pos_embed"].float(), (grid, grid),
                                                             num_prefix_tokens=1)
            logger.info("interpolated the position embeddings of %s to %dx%d patches", path, grid, grid)
        own = self.state_dict()
        missing = sorted(set(own) - set(mapped))
        unknown = sorted(set(mapped) - set(own))
        shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in mapped
                  if k in own and mapped[k].shape != own[k].shape]
        if missing or unknown or shapes:
            raise WeightLoadError(f"{path} does not fit this encoder: missing {missing[:10]} "
                                  f"({len(missing)}), unknown {unknown[:10]} ({len(unknown)}), shapes {shapes[:10]}")
        for reason in sorted(set(dropped.values())):
            keys = [k for k, r in dropped.items() if r == reason]
            logger.info("%s: %d keys not used (%s): %s%s", path, len(keys), reason, ", ".join(keys[:6]),
                        " ..." if len(keys) > 6 else "")
        return mapped


def _file_identity(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """A weights file by path, size and modification time (hashing a 4 GB file would take longer than the
    check is worth): another file, or the same one rewritten, gives another identity."""
    if not path:
        return None
    p = Path(path).expanduser()
    stat = p.stat() if p.exists() else None
    return {"path": str(p.resolve()), "bytes": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None}


def prefix_map(state: Dict[str, torch.Tensor], rename: List[Tuple[str, str]], keep_blocks: int,
               block_prefix: str, unused: Dict[str, str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Rename keys by ordered (source prefix, our prefix) rules. Blocks at index >= ``keep_blocks`` and keys
    with a prefix in ``unused`` (prefix -> reason) are reported as left out; any other key is an error."""
    out, dropped, unmapped = {}, {}, []
    for key, value in state.items():
        if key.startswith(block_prefix) and int(key[len(block_prefix):].split(".")[0]) >= keep_blocks:
            dropped[key] = "blocks after the one whose tokens BLIP-2 uses"
            continue
        reason = next((r for p, r in unused.items() if key.startswith(p)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        for src, dst in rename:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise WeightLoadError(f"{len(unmapped)} keys have no place in the encoder: {', '.join(unmapped[:12])}"
                              f"{' ...' if len(unmapped) > 12 else ''}")
    return out, dropped
