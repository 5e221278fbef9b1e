"""Drive LAVIS itself (``.venv-lavis``, made by ``make lavis`` / ``make test``) as the oracle: the LAVIS side runs
``tests/lavis/harness.py`` in a subprocess of that venv, one torch thread, offline; what it builds, computes and
patches comes back as tensors. No skip: a missing venv is a failure that says how to make it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from helpers import REPO
from tiny_bert import make_tiny_bert

LAVIS_PY = REPO / ".venv-lavis" / "bin" / "python"
HARNESS = REPO / "tests" / "lavis" / "harness.py"


def run_lavis(job: str, work: Path, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``job`` of the harness on ``spec`` in ``work`` (LAVIS finds its Hub names as folders there)."""
    if not LAVIS_PY.exists():
        pytest.fail(f"the LAVIS oracle's venv is missing ({LAVIS_PY}): run `make lavis` (make test does)")
    torch.save(spec, work / "spec.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(LAVIS_PY), str(HARNESS), job, str(work)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode:
        pytest.fail(f"LAVIS side of {job!r} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():  # every change made to LAVIS, in the test's output
        if line.startswith("patch: "):
            print(f"LAVIS {line}")
    return torch.load(work / "out.pt", weights_only=False)


def lavis_bert(work: Path, **sizes: int) -> Path:
    """A tiny BERT where LAVIS looks for ``bert-base-uncased``, without dropout (both sides then compute the same
    training-mode numbers)."""
    folder = make_tiny_bert(work / "bert-base-uncased", **sizes)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    # LAVIS loads the slow BertTokenizer, which reads vocab.txt (one token per line, in id order)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    config = json.loads((folder / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
