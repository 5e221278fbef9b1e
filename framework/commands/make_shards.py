"""``python -m framework.make_shards --cfg X.yaml --out DIR [--entry E] [--split train] [--per-shard N]``

Writes a caption data set of the config (any builder whose samples name an image file and a caption: COCO,
Flickr30K, Visual Genome, your own JSON-lines/CSV records, the generated shapes set) as webdataset shards
``DIR/000000.tar, 000001.tar, ...``, the layout the ``webdataset`` builder reads, and prints the
``datasets`` entry that trains on them. Samples keep the data set's order; ``--group-captions`` writes one
sample per image with all its captions (the paper's CapFilt form: one caption drawn per sample and pass)
instead of one per caption.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm import tqdm

from framework.commands import cli
from framework.core.errors import ConfigError
from framework.data.shards import write_shards
from framework.engine.experiment import ExperimentConfig
from framework.engine.experiment_data import builders


def records_of(dataset: Any, entry: str, group_captions: bool) -> List[Dict[str, Any]]:
    """The data set's (file, image_id, caption | captions) records, in its order."""
    samples = getattr(dataset, "samples", None)
    if not samples or "file" not in samples[0] or not ({"caption", "captions"} & set(samples[0])):
        raise ConfigError(f"datasets.{entry}: its samples do not name an image file and a caption; make_shards "
                          f"writes caption data sets (COCO-style captions, retrieval, records of kind caption)")
    if not group_captions:
        return samples
    grouped: Dict[Any, Dict[str, Any]] = {}
    for s in samples:
        r = grouped.setdefault(s["file"], {"file": s["file"], "image_id": s["image_id"], "captions": []})
        r["captions"] += s["captions"] if "captions" in s else [s["caption"]]
    return list(grouped.values())


def _run(exp: ExperimentConfig, args: argparse.Namespace) -> None:
    found = builders(exp)
    entry = args.entry or next(iter(found))
    if entry not in found:
        raise ConfigError(f"--entry {entry!r} is not among the config's datasets: {', '.join(found)}")
    builder = found[entry]
    builder.prepare([args.split])
    dataset = builder.build(args.split)
    records = records_of(dataset, entry, args.group_captions)
    out = Path(args.out)
    with tqdm(total=len(records), desc=f"shards of {entry}/{args.split}", unit="sample") as bar:
        shards = write_shards(records, dataset.image_root, out, args.per_shard, bar.update)
    last = len(shards) - 1
    print(f"wrote {len(records)} samples of {entry}/{args.split} into {len(shards)} shards in {out}; train on them "
          f"with:\n  {{builder: webdataset, shards: {{train: '{out}/{{{0:06d}..{last:06d}}}.tar'}}, "
          f"samples_per_epoch: {len(records)}}}")


def main(argv: Optional[List[str]] = None) -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="folder for the .tar shards")
        p.add_argument("--entry", help="which datasets entry of the config (default: the first)")
        p.add_argument("--split", default="train")
        p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
        p.add_argument("--group-captions", action="store_true", help="one sample per image with all its captions")

    return cli.main("framework.make_shards", "Write a caption data set as webdataset shards.", _run, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
