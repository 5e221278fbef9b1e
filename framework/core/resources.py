"""Where the shipped configs live: ``datasets_cfg/`` (one file per data set) and ``projects/`` (the paper's, the
demo's and the ablations' experiments).

In a checkout (or an editable install) they are the checkout's folders. A plain ``pip install .`` installs them as
the distribution's data files (``share/blip2-framework/``, declared in ``pyproject.toml``), found through the
installed distribution's file list. ``BLIP2_ROOT`` names another folder holding both, and wins over the others.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path
from typing import Optional

from framework.core.errors import ConfigError

ROOT_VARIABLE = "BLIP2_ROOT"
DISTRIBUTION = "blip2-framework"


def root() -> Path:
    """The folder holding ``datasets_cfg/`` and ``projects/``."""
    explicit = os.environ.get(ROOT_VARIABLE)
    if explicit:
        folder = Path(explicit).expanduser()
        if not (folder / "datasets_cfg").is_dir():
            raise ConfigError(f"{ROOT_VARIABLE}={explicit}: no datasets_cfg/ folder there; point it at a checkout of "
                              f"the repository (or unset it)")
        return folder
    checkout = Path(__file__).resolve().parents[2]  # framework/core/resources.py: the checkout holding framework/
    if (checkout / "datasets_cfg").is_dir():
        return checkout
    installed = _installed()
    if installed is None:
        raise ConfigError(f"cannot find datasets_cfg/ and projects/: not in a checkout, and the installed "
                          f"{DISTRIBUTION} holds no data files; reinstall it with pip, or set {ROOT_VARIABLE} to a "
                          f"checkout of the repository")
    return installed


@functools.lru_cache(maxsize=None)
def _installed() -> Optional[Path]:
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if "datasets_cfg" in f.parts:
            above = f.parts[:f.parts.index("datasets_cfg")]
            return Path(f.locate()).resolve().parents[len(f.parts) - len(above) - 1]
    return None


def find_config(path: str) -> Path:
    """A config path as given; a relative one that is not there, under :func:`root` (so the README's
    ``--cfg projects/blip2/...`` works from any folder once the package is installed)."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = root() / given
    return shipped if shipped.exists() else given
