"""Web-scale data in webdataset tar shards: writing them, and streaming them resumably across ranks and workers.

A shard (``{000000..000099}.tar``) holds samples as consecutive files sharing a key: ``<key>.jpg`` (or png, webp),
``<key>.txt`` (a caption) and optionally ``<key>.json`` (``image_id``, ``captions``: a list, as in the paper's
CapFilt data, where one caption is drawn per sample and pass).

Streaming (:class:`ShardStream`) is endless: pass after pass over the shards, each pass in its own shard order.
Every (rank, dataloader worker) pair is a *slot*; a pass gives slot ``s`` of ``S`` the shards ``order[s::S]``, so
each sample is seen exactly once per pass across the whole job. Samples are shuffled within a shard by a buffer
(seeded by seed, pass and shard) and shards are read one after another, so a slot's position is (pass, shard,
samples taken from it): a resumed run skips the finished shards unopened and replays only the current one up to
its position. Each sample carries its slot's position (``_stream``), which the runner keeps per consumed batch
and stores in the checkpoint. Corrupt samples and unreadable or truncated shards are skipped, counted in the
position (so the counts survive a resume) and named in the log (the first few per slot).
"""
from __future__ import annotations

import io
import json
import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from framework.core import dist
from framework.core.errors import BadDataError
from framework.core.logs import EVERY_RANK, logger
from framework.data.images import load_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
NAMED_PER_SLOT = 5  # bad samples / shards named in the log per slot; the rest are only counted


@dataclass
class Position:
    """Where a slot is: ``pass_`` over the shards, index of the shard in the slot's list for that pass, raw
    samples taken from it (bad ones included), and the bad samples / shards met so far."""
    pass_: int = 0
    shard: int = 0
    offset: int = 0
    bad_samples: int = 0
    bad_shards: int = 0


def expand(urls: str | List[str]) -> List[str]:
    """``dir/{000000..000009}.tar`` (brace expansion, ``::`` between patterns) or a list of URLs."""
    from webdataset.shardlists import expand_urls

    return [u for pattern in ([urls] if isinstance(urls, str) else urls) for u in expand_urls(pattern)]


def read_shard(url: str) -> Iterator[Dict[str, Any]]:
    """The samples of one shard: {__key__, <ext>: bytes, ...}, through webdataset's own tar reading and grouping
    (``gopen``: local paths, http(s), ``pipe:`` commands); a truncated or unreadable tar raises once the readable
    samples are out."""
    from webdataset import gopen
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with gopen(url, "rb") as stream:
        yield from group_by_keys({**f, "__url__": url} for f in tar_file_iterator(stream))


def _until_error(samples: Iterator[Any], errors: List[Exception]) -> Iterator[Any]:
    """``samples`` up to the first read error, which goes into ``errors`` instead of out: a shuffle buffer above
    would otherwise drop the samples it holds (all of a shard smaller than the buffer) when the error passes."""
    try:
        yield from samples
    except Exception as e:  # a truncated or unreadable tar, whatever the reader raises
        errors.append(e)


def _shuffled(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """webdataset's shuffle buffer of ``size``, drawing from ``rng`` (0: in stored order)."""
    from webdataset.filters import shuffle

    return shuffle(size, size, rng=rng)(samples) if size > 1 else samples


def reader_slot(first_slot: int, rank_world: Tuple[int, int]) -> Tuple[int, int]:
    """(this reader's slot, number of slots): slot = rank x workers + local slot, where dataloader worker ``w``
    serves local slot ``(w + first_slot) % workers``. The rank comes from the main process (``rank_world``):
    a worker started with ``spawn`` is outside the process group."""
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info else (1, 0)
    rank, world = rank_world
    return rank * workers + (worker + first_slot) % workers, world * workers


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class ShardStream(IterableDataset):
    """An endless, resumable stream over tar shards (see the module docstring).

    ``decode(raw sample, rng)`` turns the raw files of a sample into the sample dict, raising on a corrupt one.
    ``samples_per_epoch``: the nominal epoch the runner counts iterations by (the lr schedule's epochs).
    Set before each ``iter()`` (``framework.data.loader.set_stream_position``): ``shuffle`` (shard order and
    buffer; false: shards as listed, samples as stored),
    ``positions`` (slot -> :class:`Position` to resume from) and ``first_slot`` (the local slot serving the first
    batch: batch ``n`` of a rank always comes from its worker slot ``n % workers``, across restarts).
    """

    def __init__(self, urls: List[str], decode: Callable[[Dict[str, Any], random.Random], Dict[str, Any]],
                 samples_per_epoch: int, seed: int = 0, shuffle_buffer: int = 1000, name: str = "shards") -> None:
        if not urls:
            raise BadDataError(f"{name}: no shards")
        self.urls, self.decode, self.samples_per_epoch = urls, decode, samples_per_epoch
        self.seed, self.shuffle_buffer, self.name = seed, shuffle_buffer, name
        self.shuffle = True
        self.positions: Dict[int, Dict[str, int]] = {}
        self.first_slot = 0
        self.rank_world = (dist.rank(), dist.world_size())

    def _order(self, pass_: int) -> List[str]:
        order = list(self.urls)
        if self.shuffle:
            random.Random(_seed(self.seed, "shards", pass_)).shuffle(order)
        return order

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        slot, n_slots = reader_slot(self.first_slot, self.rank_world)
        if len(self.urls) < n_slots:
            raise BadDataError(f"{self.name}: {len(self.urls)} shards for {n_slots} readers (ranks x dataloader "
                             f"workers): every reader needs a shard; lower run.num_workers or write more, smaller "
                             f"shards")
        pos = Position(**self.positions.get(slot, {}))
        named = 0
        while True:
            mine = self._order(pos.pass_)[slot::n_slots]
            good_in_pass = 0
            while pos.shard < len(mine):
                url = mine[pos.shard]
                rng = random.Random(_seed(self.seed, pos.pass_, url))
                broken: List[Exception] = []  # the shard's read error, raised once the buffer has given out
                raws = _shuffled(_until_error(read_shard(url), broken), self.shuffle_buffer if self.shuffle else 0,
                                 rng)
                taken = 0
                try:
                    for raw in raws:
                        taken += 1
                        if taken <= pos.offset:
                            continue  # taken before the resume point
                        pos.offset = taken
                        try:
                            sample = self.decode(raw, random.Random(_seed(self.seed, pos.pass_, url, raw["__key__"])))
                        except Exception as e:  # a corrupt image or text: skipped, counted, named
                            pos.bad_samples += 1
                            named = self._name_bad(named, f"skipped corrupt sample {raw.get('__key__')} in {url}: "
                                                          f"{type(e).__name__}: {e}", pos)
                            continue
                        good_in_pass += 1
                        sample["_stream"] = (slot, asdict(pos))
                        yield sample
                    if broken:
                        raise broken[0]
                except Exception as e:  # a truncated or unreadable shard: the rest of it is skipped
                    pos.bad_shards += 1
                    named = self._name_bad(named, f"skipped the rest of shard {url} after {taken} samples: "
                                                  f"{type(e).__name__}: {e}", pos)
                pos.shard, pos.offset = pos.shard + 1, 0
            if not good_in_pass and pos.bad_samples + pos.bad_shards:
                raise BadDataError(f"{self.name}: a whole pass over shards {mine} gave no readable sample")
            pos.pass_, pos.shard = pos.pass_ + 1, 0

    def _name_bad(self, named: int, message: str, pos: Position) -> int:
        if named < NAMED_PER_SLOT:
            logger.warning("%s: %s (%d corrupt samples, %d bad shards so far in this reader%s)", self.name, message,
                           pos.bad_samples, pos.bad_shards,
                           "; further ones are only counted" if named + 1 == NAMED_PER_SLOT else "", extra=EVERY_RANK)
        return named + 1


class ShardSamples(Dataset):
    """An evaluation split given as (small) shards, read into memory once: map-style, in stored order, with the
    retrieval attributes (``texts``, ``txt2img``, ``img2txt``) the stage-1 and retrieval evaluations read."""

    def __init__(self, urls: List[str], decode: Callable[[Dict[str, Any], random.Random], Dict[str, Any]],
                 texts_of: Callable[[Dict[str, Any]], List[str]]) -> None:
        self.raws = [raw for url in urls for raw in read_shard(url)]
        self.decode = decode
        self.texts: List[str] = []
        self.txt2img: List[int] = []
        self.img2txt: List[List[int]] = []
        for i, raw in enumerate(self.raws):
            caps = texts_of(raw)
            self.img2txt.append(list(range(len(self.texts), len(self.texts) + len(caps))))
            self.texts += caps
            self.txt2img += [i] * len(caps)

    def __len__(self) -> int:
        return len(self.raws)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = self.decode(self.raws[index], random.Random(index))
        sample.pop("text_input", None)
        return {**sample, "index": index}


# ------------------------------------------------------------------------------------------------ writing
def write_shards(records: List[Dict[str, Any]], image_root: Path, out: Path, per_shard: int,
                 progress: Optional[Callable[[int], None]] = None) -> List[Path]:
    """Write ``records`` ({file, image_id, caption | captions}) as ``out/{000000..}.tar``: the image file's bytes
    as they are (its extension kept), ``txt`` the (first) caption, ``json`` image_id and all captions."""
    from webdataset import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / "%06d.tar")
    with ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for i, r in enumerate(records):
            file = Path(image_root) / r["file"]
            ext = file.suffix.lower().lstrip(".")
            ext = "jpg" if ext == "jpeg" else ext
            captions = r["captions"] if "captions" in r else [r["caption"]]
            sink.write({"__key__": f"{i:09d}", ext: file.read_bytes(), "txt": captions[0],
                        "json": json.dumps({"image_id": r["image_id"], "captions": captions}).encode()})
            if progress:
                progress(1)
    return sorted(out.glob("*.tar"))


def open_image(raw: Dict[str, Any]) -> Image.Image:
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise ValueError(f"no image file (one of {', '.join(IMAGE_EXTS)}) in the sample, only {sorted(raw)}")
    return load_image(io.BytesIO(raw[ext]))


def meta_of(raw: Dict[str, Any]) -> Dict[str, Any]:
    """The sample's ``json`` file, parsed ({} without one)."""
    return json.loads(raw["json"]) if "json" in raw else {}


def captions_of(raw: Dict[str, Any], meta: Dict[str, Any]) -> List[str]:
    caps = meta.get("captions") or ([raw["txt"].decode("utf-8")] if "txt" in raw else [])
    caps = [caps] if isinstance(caps, str) else caps
    if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
        raise ValueError("no caption (txt, or json 'captions') or an empty one")
    return caps


def image_id_of(meta: Dict[str, Any], key: str) -> int:
    """The json's ``image_id`` when the shard has one, else a stable number from the sample's key."""
    return int(meta["image_id"]) if "image_id" in meta else zlib.crc32(key.encode()) & 0x7FFFFFFF


def seeded(fn: Callable[[Any], Any], x: Any, rng: random.Random) -> Any:
    """``fn(x)`` (random augmentation) under a torch RNG seeded from ``rng``: the same sample gets the same
    augmentation whichever worker or process reads it, and after a resume."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.getrandbits(63))
        return fn(x)
