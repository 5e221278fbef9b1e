"""Web-scale data: shards written from shapes, streamed across ranks and workers, resumed mid-epoch by position,
corrupt samples and truncated shards skipped and counted, several captions per image."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from helpers import REPO, read_log, toy_config, write_yaml
from PIL import Image

from framework.commands.make_shards import main as make_shards
from framework.commands.train import main as train_main

EVAL_PROC = {"image": [{"name": "resize", "size": 32}, {"name": "normalize"}]}


def _shapes_shards(tmp: Path, per_shard: int = 30, *extra: str) -> Path:
    """shapes_caption's training split (48 images x 5 captions = 240 samples) as shards of ``per_shard``."""
    cfg = write_yaml(tmp / "shapes.yaml", toy_config(tmp / "unused"))
    out = tmp / "shards"
    assert make_shards(["--cfg", str(cfg), "--out", str(out), "--per-shard", str(per_shard), *extra]) == 0
    return out


def _entry(shards: Path, last: int, **kw: Any) -> Dict[str, Any]:
    return {"builder": "webdataset", "shards": {"train": f"{shards}/{{000000..{last:06d}}}.tar"},
            "samples_per_epoch": 240, "processors": {"train": EVAL_PROC, "eval": EVAL_PROC}, **kw}


def _stream(shards: Path, last: int, **kw: Any):
    from plugins.datasets.webdataset_captions import WebDatasetBuilder

    args = {k: v for k, v in _entry(shards, last, **kw).items() if k != "builder"}
    return WebDatasetBuilder("shapes_shards", **args).build("train")


def test_written_shards_hold_the_data_set_in_order(tmp_path: Path, capsys) -> None:
    from framework.data.shards import read_shard

    shards = _shapes_shards(tmp_path)
    assert sorted(p.name for p in shards.iterdir()) == [f"{i:06d}.tar" for i in range(8)]
    assert "train on them with:" in capsys.readouterr().out
    raws = [r for i in range(8) for r in read_shard(str(shards / f"{i:06d}.tar"))]
    assert [r["__key__"] for r in raws] == [f"{i:09d}" for i in range(240)]
    meta = json.loads(raws[0]["json"])
    assert raws[0]["txt"].decode() == meta["captions"][0] and raws[0]["png"][:4] == b"\x89PNG"


@pytest.mark.slow
def test_shards_train_stage1_to_the_same_losses_as_the_map_style_loader(tmp_path: Path) -> None:
    from helpers import stage1_config

    cfg = write_yaml(tmp_path / "s1.yaml", stage1_config(tmp_path, tmp_path / "unused"))
    shards = tmp_path / "shards"
    assert make_shards(["--cfg", str(cfg), "--out", str(shards), "--per-shard", "400"]) == 0  # 1500 samples
    run = {"max_iters": 6, "log_every": 1, "shuffle": False, "eval_splits": []}
    mapped = stage1_config(tmp_path, tmp_path / "map", **run)
    streamed = stage1_config(tmp_path, tmp_path / "stream", **run)
    text = [{"name": "clean_caption", "max_words": 30}]  # what shapes_retrieval's datasets_cfg entry adds
    proc = {k: {**v, "text": text} for k, v in mapped["datasets"]["shapes_retrieval"]["processors"].items()}
    streamed["datasets"] = {"shapes_shards": {"builder": "webdataset", "samples_per_epoch": 1500,
                                              "shards": {"train": f"{shards}/{{000000..000003}}.tar"},
                                              "processors": proc}}
    for name, c in (("map", mapped), ("stream", streamed)):
        assert train_main(["--cfg", str(write_yaml(tmp_path / f"{name}.yaml", c))]) == 0
    keys = ["loss", "loss_itc", "loss_itm", "loss_itg"]
    ref, got = read_log(tmp_path / "map"), read_log(tmp_path / "stream")
    assert len(ref) == 6 and [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]
    assert got[-1]["data_bad_samples"] == 0 and got[-1]["data_bad_shards"] == 0


def _rank_keys(rank: int, world: int, store: str, shards: str, out: str) -> None:
    from framework.data.loader import set_stream_position, stream_loader

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    stream = _stream(Path(shards), 7, shuffle_buffer=10)
    loader = stream_loader(stream, batch_size=5, num_workers=2)
    keys: List[List[str]] = []
    positions: Dict[int, Any] = {}
    for start in (0, 24):  # two passes of 240 samples / (5 x 2 ranks) = 24 batches; the second restarts the
        set_stream_position(loader, positions, start, shuffle=True)  # loader from the positions reached
        batches, seen = iter(loader), []
        for _ in range(24):
            batch = next(batches)
            seen += batch["key"]
            positions.update(dict(batch["_stream"]))
        keys.append(seen)
    gathered: List[Any] = [None] * world
    tdist.all_gather_object(gathered, keys)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    tdist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_with_two_workers_each_see_every_sample_once_per_pass(tmp_path: Path) -> None:
    shards = _shapes_shards(tmp_path)
    out = tmp_path / "keys.json"
    mp.spawn(_rank_keys, args=(2, str(tmp_path / "store"), str(shards), str(out)), nprocs=2, join=True)
    per_rank = json.loads(out.read_text())
    everything = [f"{i:09d}" for i in range(240)]
    for p in range(2):
        seen = per_rank[0][p] + per_rank[1][p]
        assert sorted(seen) == everything  # each sample exactly once in the pass, across 2 ranks x 2 workers
        assert not set(per_rank[0][p]) & set(per_rank[1][p])
    assert per_rank[0][0] != per_rank[0][1]  # the second pass reads the shards in another order
    assert per_rank[0][0][:20] != sorted(per_rank[0][0][:20])  # and shuffles within them


def _wait_for_iter(out: Path, it: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    import time

    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        log = out / "log.jsonl"
        if log.exists() and (out / "checkpoints" / "last.pt").exists() and f'"iter": {it},' in log.read_text():
            return
        time.sleep(0.02)
    raise TimeoutError("the run to be killed did not reach the iteration")


def _keys_per_iter(out: Path) -> List[List[int]]:
    return [[int(r[f"key_{i}"]) for i in range(8)] for r in read_log(out)]


@pytest.mark.slow
def test_killed_mid_epoch_over_shards_resumes_with_no_sample_repeated_or_lost(tmp_path: Path) -> None:
    shards = _shapes_shards(tmp_path)

    def config(out: Path) -> Dict[str, Any]:
        cfg = toy_config(out, max_iters=14, checkpoint_every=3, num_workers=2, eval_splits=[])
        cfg["model"]["log_keys"] = True
        cfg["datasets"] = {"shapes_shards": _entry(shards, 7, shuffle_buffer=10)}
        return cfg

    assert train_main(["--cfg", str(write_yaml(tmp_path / "ref.yaml", config(tmp_path / "ref")))]) == 0
    path = write_yaml(tmp_path / "killed.yaml", config(tmp_path / "killed"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.Popen([sys.executable, "-m", "framework.train", "--cfg", str(path), "--options",
                             "model.sleep_s=0.3"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_iter(tmp_path / "killed", 8, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 8 <= max(r["iter"] for r in read_log(tmp_path / "killed")) < 14
    assert train_main(["--cfg", str(path), "--resume", "auto", "--options", "model.sleep_s=0.3"]) == 0

    ref, resumed = _keys_per_iter(tmp_path / "ref"), _keys_per_iter(tmp_path / "killed")
    assert len(resumed) == 14 and resumed == ref  # the same samples, in the same batches and order
    flat = [k for batch in resumed for k in batch]
    assert len(set(flat)) == len(flat) == 112  # 14 x 8 samples of a 240-sample epoch: none twice
    a = [[r[k] for k in ("loss", "lr")] for r in read_log(tmp_path / "ref")]
    assert a == [[r[k] for k in ("loss", "lr")] for r in read_log(tmp_path / "killed")]


@pytest.mark.slow
def test_truncated_shard_and_corrupt_image_are_skipped_and_counted(tmp_path: Path) -> None:
    from framework.data.shards import write_shards

    images = tmp_path / "images"
    images.mkdir()
    source = _shapes_shards(tmp_path)
    from framework.data.shards import read_shard

    records = []
    for i, raw in enumerate(r for n in range(8) for r in read_shard(str(source / f"{n:06d}.tar"))):
        name = f"{i}.jpg" if i == 37 else f"{i}.png"
        if i == 37:  # a JPEG cut short, as a broken download leaves it
            buf = io.BytesIO()
            Image.open(io.BytesIO(raw["png"])).convert("RGB").save(buf, "JPEG")
            (images / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        else:
            (images / name).write_bytes(raw["png"])
        records.append({"file": name, "image_id": i, "caption": raw["txt"].decode()})
    shards = tmp_path / "damaged"
    write_shards(records, images, shards, per_shard=30)
    tar = shards / "000005.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut in the middle of a sample

    # shards in listed order: 30 x 8 samples cover the first pass (about 224 readable) and start the second
    # with shard 0, so each damage is met exactly once
    cfg = toy_config(tmp_path / "run", max_iters=30, log_every=1, shuffle=False, eval_splits=[])
    cfg["datasets"] = {"shapes_shards": _entry(shards, 7)}
    assert train_main(["--cfg", str(write_yaml(tmp_path / "run.yaml", cfg))]) == 0
    last = read_log(tmp_path / "run")[-1]
    assert last["iter"] == 30 and last["data_bad_samples"] == 1 and last["data_bad_shards"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipped corrupt sample 000000037" in log and "OSError: Truncated File Read" in log
    assert f"skipped the rest of shard {tar}" in log


def test_several_captions_per_image_one_drawn_per_pass(tmp_path: Path) -> None:
    shards = _shapes_shards(tmp_path, 12, "--group-captions")  # 48 images, 5 captions each
    stream = _stream(shards, 3, shuffle_buffer=0, samples_per_epoch=48)
    stream.shuffle = False
    from itertools import islice

    from framework.data.shards import captions_of, meta_of, read_shard

    captions = {r["__key__"]: captions_of(r, meta_of(r)) for n in range(4)
                for r in read_shard(str(shards / f"{n:06d}.tar"))}
    two_passes = list(islice(iter(stream), 96))
    assert [s["key"] for s in two_passes[:48]] == [s["key"] for s in two_passes[48:]]
    assert all(s["text_input"] in captions[s["key"]] for s in two_passes)
    drawn = {k: {s["text_input"] for s in two_passes if s["key"] == k} for k in captions}
    assert sum(len(v) == 2 for v in drawn.values()) > 24  # most images get another caption in the second pass


def test_stream_errors_name_the_fix(tmp_path: Path) -> None:
    from framework.core.errors import ConfigError

    shards = _shapes_shards(tmp_path, 120)  # 2 shards
    stream = _stream(shards, 1)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=0)
    stream.rank_world = (0, 3)  # three ranks for two shards
    with pytest.raises(ValueError, match="2 shards for 3 readers .* lower run.num_workers or write more"):
        next(iter(loader))
    with pytest.raises(ConfigError, match="samples_per_epoch is not set"):
        _stream(shards, 1, samples_per_epoch=None)


def test_missing_shards_name_the_entry_and_the_source(tmp_path: Path) -> None:
    from framework.core.errors import MissingDataError
    from plugins.datasets.webdataset_captions import WebDatasetBuilder

    b = WebDatasetBuilder("cc3m", shards={"train": f"{tmp_path}/{{00000..00002}}.tar"}, samples_per_epoch=9,
                          how_to_get="img2dataset over the TSV")
    with pytest.raises(MissingDataError, match=r"'cc3m' .*datasets_cfg/cc3m.yaml.*3 of 3 train shards are missing, "
                                               r"e.g. .*00000.tar(.|\n)*img2dataset over the TSV"):
        b.prepare(["train"])
    assert not b.has_split("val") and b.data_files(["train"])[0].path == tmp_path


def test_a_mixture_of_shard_streams_resumes_where_it_stopped(tmp_path: Path) -> None:
    from itertools import islice

    from framework.data.loader import IterableMixture

    shards = _shapes_shards(tmp_path)

    def mixture() -> IterableMixture:
        return IterableMixture([_stream(shards, 3, shuffle_buffer=5), _stream(shards, 7, shuffle_buffer=5)], [1, 3],
                               seed=0)

    whole = [s["key"] for s in islice(iter(mixture()), 300)]
    first = list(islice(iter(mixture()), 120))
    resumed = mixture()
    resumed.positions = dict([first[-1]["_stream"]])  # what the runner stores after 120 samples
    rest = [s["key"] for s in islice(iter(resumed), 180)]
    assert [s["key"] for s in first] + rest == whole


def test_a_truncated_shard_smaller_than_the_shuffle_buffer_gives_the_samples_it_still_holds(tmp_path: Path) -> None:
    from itertools import islice

    from framework.data.shards import read_shard

    shards = _shapes_shards(tmp_path, 120)  # two shards of 120 samples; the buffer (1000) is larger than either
    tar = shards / "000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    readable = []
    with pytest.raises(Exception):
        for raw in read_shard(str(tar)):
            readable.append(raw["__key__"])
    assert 40 < len(readable) < 120
    stream = _stream(shards, 1, shuffle_buffer=1000)
    samples = list(islice(iter(stream), 120 + len(readable) + 1))
    keys = [s["key"] for s in samples[:-1]]  # the first pass
    assert sorted(keys) == sorted([f"{i:09d}" for i in range(120)] + readable)  # each readable sample once
    assert keys != sorted(keys)  # and shuffled
    assert samples[-1]["_stream"][1]["bad_shards"] == 1  # the cut shard counted (once its samples are out)
