"""Pytest set-up only: the tests folder on sys.path, no model hub, generated data in a per-session folder.
The helpers the tests share are in ``helpers.py``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # toy_plugins, importable as listed under `plugins:`
# nothing may come from a model hub: any attempt fails instead of downloading
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated data sets go to a per-session folder, never to the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["BLIP2_CACHE"] = str(path)
    return path
