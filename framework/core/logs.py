"""Run logs on rank 0: a readable ``train.log``, machine-readable ``log.jsonl`` and TensorBoard events."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from framework.core import dist

logger = logging.getLogger("framework")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _OncePerJob(logging.Filter):
    """A job's events are told once, by rank 0. Other ranks print only what happened to them alone (logged with
    ``extra=EVERY_RANK``, e.g. a corrupt sample one rank read), marked with their rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        r = dist.launch_rank()
        if r == 0:
            return True
        if getattr(record, "every_rank", False):
            record.msg = f"[rank {r}] {record.msg}"
            return True
        return False


EVERY_RANK = {"every_rank": True}
# training-record keys that measure the machine, not the computation: runs compared for repeatability leave them out
TIMING_KEYS = ("sec_per_iter", "data_time", "step_time", "samples_per_sec")


def setup_console() -> None:
    if not logger.handlers:
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h.addFilter(_OncePerJob())
        logger.addHandler(h)
        logger.setLevel(logging.INFO)


def console_has_bar() -> bool:
    """Whether progress bars are drawn: on a terminal only (in a cluster's log file their carriage-return
    updates are noise; plain lines take their place)."""
    return sys.stderr.isatty()


class RunLog:
    """Appends to ``output_dir/log.jsonl`` (one JSON object per event) and TensorBoard; no-op off rank 0."""

    def __init__(self, output_dir: Path, tensorboard: bool, first_step: int = 1) -> None:
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

            # purge_step hides the events a killed run wrote past the point this one continues from
            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=first_step)

    def write(self, event: str, step: int, values: Dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"event": event, "iter": step, **values}) + "\n")
        if event == "train":  # a line a person reads: in train.log always, on the console where no bar shows it
            shown = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "samples_per_sec"}
            order = sorted(shown, key=lambda k: not k.startswith("loss"))  # the losses first, as one reads them
            line = f"iter {step}: " + " ".join(f"{k} {shown[k]:.4g}" for k in order)
            if console_has_bar():
                self._file_handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, None, None))
            else:
                logger.info(line)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Text a person reads in TensorBoard's Text tab (the parameter table, sample predictions); markdown,
        so it is shown as a code block."""
        if self.active and self.tb is not None:
            self.tb.add_text(tag, "```\n" + text + "\n```", step)

    def close(self) -> None:
        if not self.active:
            return
        if self.tb is not None:
            self.tb.close()
        logger.removeHandler(self._file_handler)
        self._file_handler.close()


def truncate_after(jsonl: Path, step: int) -> None:
    """Drop records past ``step``: on resume the log continues the checkpoint's timeline, without the
    iterations a killed run logged after its last checkpoint (they are recomputed identically); ``step`` 0 (a
    run that died before its first checkpoint) empties it. A line that is not a JSON record (torn by a kill in
    the middle of a write) is dropped with a warning."""
    if not dist.is_main() or not jsonl.exists():
        return
    keep = []
    for n, line in enumerate(jsonl.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line:
            continue
        try:
            record = json.loads(line)
            it = int(record["iter"])
        except (ValueError, KeyError, TypeError):
            logger.warning("%s line %d is not a log record (torn by a kill during a write?): dropped: %.80s",
                           jsonl, n, line)
            continue
        if it <= step:
            keep.append(line)
    jsonl.write_text("".join(line + "\n" for line in keep))
