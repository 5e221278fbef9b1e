"""The frozen-feature cache: a frozen image encoder's output tokens, computed once per image and reused by every
stage-1 / stage-2 run and ablation on the same images.

``python -m framework.cache_features --cfg X.yaml`` writes, per dataset entry and split::

    <cache_dir>/<entry>/<split>/features.npy     [images, tokens, width] fp16, read memory-mapped
    <cache_dir>/<entry>/<split>/index.json       image file -> row
    <cache_dir>/<entry>/<split>/fingerprint.json what the tokens depend on (encoder, weights, precision, processing)

A run with ``model.image_encoder.cached: true`` gets, instead of each sample's image, that image's row (the data
set's ``image()`` reads the cache); the encoder is not built. The run refuses a cache whose fingerprint differs
from its own encoder's and image processing (naming what differs), and a training split that augments randomly
(a cache would freeze one random crop).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from framework.core.errors import BadDataError, ConfigError


class FeatureCache:
    """One entry/split of the cache, opened read-only and memory-mapped (workers share the page cache)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index: Dict[str, int] = json.loads((folder / "index.json").read_text())
        self.fingerprint: Dict[str, Any] = json.loads((folder / "fingerprint.json").read_text())
        self._features: Optional[np.ndarray] = None  # opened lazily, in the process that reads

    def __getitem__(self, file: str) -> torch.Tensor:
        if self._features is None:
            self._features = np.load(self.folder / "features.npy", mmap_mode="r")
        row = self.index.get(str(file))
        if row is None:
            raise BadDataError(f"image {file} is not in the feature cache {self.folder}; rerun "
                           f"python -m framework.cache_features for this data set")
        return torch.from_numpy(np.array(self._features[row]))

    def __getstate__(self) -> Dict[str, Any]:  # a worker opens its own memory map
        return {**self.__dict__, "_features": None}


def cache_folder(cache_dir: Path, entry: str, split: str) -> Path:
    return Path(cache_dir) / entry / split


def random_processors(pipeline: Any) -> List[str]:
    """Names of the random processors in a split's image pipeline (processors that declare ``random = True``)."""
    return [type(step).__name__ for step in getattr(pipeline, "steps", []) if getattr(step, "random", False)]


def open_cache(folder: Path, fingerprint: Dict[str, Any], where: str, how_to_make: str) -> FeatureCache:
    """The cache in ``folder`` if it was made with ``fingerprint``; else a ConfigError naming what differs."""
    if not (folder / "fingerprint.json").is_file():
        raise ConfigError(f"{where}: model.image_encoder.cached is true but there is no feature cache in {folder}; "
                          f"make it with: {how_to_make}")
    try:
        cache = FeatureCache(folder)
        rows = np.load(folder / "features.npy", mmap_mode="r").shape[0]  # reads the header, maps the whole file
    except (OSError, ValueError) as e:  # a missing or truncated file, JSON that is not JSON, an mmap past the end
        raise ConfigError(f"{where}: the feature cache in {folder} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); remake it with: {how_to_make}") from None
    if not isinstance(cache.index, dict) or sorted(cache.index.values()) != list(range(rows)):
        raise ConfigError(f"{where}: the feature cache in {folder} is inconsistent (features.npy has {rows} rows, "
                          f"index.json does not number them 0..{rows - 1}); remake it with: {how_to_make}")
    have = cache.fingerprint
    diff = [f"{k}: cache {have.get(k)!r}, this run {fingerprint.get(k)!r}"
            for k in sorted(set(have) | set(fingerprint)) if have.get(k) != fingerprint.get(k)]
    if diff:
        raise ConfigError(f"{where}: the feature cache in {folder} was made by another encoder or image processing "
                          f"({'; '.join(diff)}); remake it with: {how_to_make}")
    return cache


def write_cache(files: List[str], load: Callable[[str], torch.Tensor], encoder: torch.nn.Module, folder: Path,
                fingerprint: Dict[str, Any], batch_size: int, device: torch.device,
                progress: Optional[Callable[[int], None]] = None) -> None:
    """Encode ``files`` (``load`` gives each one's processed image tensor) and write the cache into ``folder``
    atomically: a half-written cache is never found, an interrupted run leaves the previous one."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    features = None
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            tokens = encoder(torch.stack([load(f) for f in chunk]).to(device)).to(torch.float16).cpu().numpy()
            if features is None:
                features = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                                     shape=(len(files), *tokens.shape[1:]))
            features[start:start + len(chunk)] = tokens
            if progress:
                progress(len(chunk))
    features.flush()
    del features
    (tmp / "index.json").write_text(json.dumps({f: i for i, f in enumerate(files)}))
    (tmp / "fingerprint.json").write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
