"""What every benchmark writes: one JSON file of its results, stamped with the machine they were measured on."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Dict


def write_results(path: str | Path, results: Dict[str, Any]) -> None:
    """``results`` as JSON at ``path`` (its folder made), with the machine, torch and thread count first."""
    import torch

    stamp = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
             "threads": torch.get_num_threads()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**stamp, **results}, indent=1) + "\n")
    print(f"wrote {path}")
