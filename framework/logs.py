"""Run logs on rank 0: a readable ``train.log``, machine-readable ``log.jsonl`` and TensorBoard events."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from framework import dist

logger = logging.getLogger("framework")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_console() -> None:
    if not logger.handlers:
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO if dist.is_main() else logging.WARNING)


class RunLog:
    """Appends to ``output_dir/log.jsonl`` (one JSON object per event) and TensorBoard; no-op off rank 0."""

    def __init__(self, output_dir: Path, tensorboard: bool) -> None:
        self.active = dist.is_main()
        self.jsonl = output_dir / "log.jsonl"
        self.tb = None
        if not self.active:
            return
        fh = logging.FileHandler(output_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
        self._file_handler: Optional[logging.Handler] = fh
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, event: str, step: int, values: Dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"event": event, "iter": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if not self.active:
            return
        if self.tb is not None:
            self.tb.close()
        logger.removeHandler(self._file_handler)
        self._file_handler.close()


def truncate_after(jsonl: Path, step: int) -> None:
    """Drop records past ``step``: on resume the log continues the checkpoint's timeline, without the
    iterations a killed run logged after its last checkpoint (they are recomputed identically)."""
    if not dist.is_main() or not jsonl.exists():
        return
    keep = [line for line in jsonl.read_text().splitlines() if line and json.loads(line)["iter"] <= step]
    jsonl.write_text("".join(line + "\n" for line in keep))
