"""Data loading with an order that is a pure function of (seed, epoch, rank), so a resumed run sees
exactly the samples, in the order and with the augmentation, that the uninterrupted run would have."""
from __future__ import annotations

import bisect
import hashlib
import itertools
import zlib
from typing import Any, Dict, Iterator, List

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from framework.core import dist
from framework.data.shards import ShardStream, reader_slot


def collate(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack tensors and numbers; keep strings and ragged values (lists of captions/answers) as lists."""
    out: Dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class SeededSamples(Dataset):
    """Runs each ``__getitem__`` under a torch generator seeded by (seed, epoch, index): random augmentation
    depends on the sample, not on which worker or process happens to load it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode()))
            return self.dataset[index]


class Mixture(Dataset):
    """Several training sets drawn in given ratios. An epoch has as many samples as all the parts together;
    which part each position takes is drawn with the ratios, and each part serves its samples in a fresh
    permutation (cycling when drawn more often than it has samples) — a function of (seed, epoch), so a resumed
    run sees the same samples."""

    def __init__(self, parts: List[Dataset], ratios: List[float], seed: int) -> None:
        if len(parts) != len(ratios) or any(r <= 0 for r in ratios):
            raise ValueError(f"one positive ratio per data set expected, got {ratios} for {len(parts)} sets")
        self.parts, self.seed = parts, seed
        self.ratios = torch.tensor(ratios, dtype=torch.float64) / sum(ratios)
        self.epoch, self._plan = 0, None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._plan = epoch, None

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)  # type: ignore[arg-type]

    def plan(self) -> List[tuple]:
        """(part, index in part) of every position of the current epoch."""
        if self._plan is None:
            g = torch.Generator().manual_seed(zlib.crc32(f"mixture/{self.seed}/{self.epoch}".encode()))
            which = torch.multinomial(self.ratios, len(self), replacement=True, generator=g).tolist()
            perms = [torch.randperm(len(p), generator=g).tolist() for p in self.parts]  # type: ignore[arg-type]
            served = [0] * len(self.parts)
            self._plan = []
            for d in which:
                self._plan.append((d, perms[d][served[d] % len(perms[d])]))
                served[d] += 1
        return self._plan

    def __getitem__(self, index: int) -> Any:
        d, i = self.plan()[index]
        return self.parts[d][i]


class IterableMixture(IterableDataset):
    """Streams (web-scale shards) drawn in given ratios: each sample comes from a stream picked with the ratios
    (a function of seed and reader slot); a stream that ends starts again, so the mixture never runs dry before
    the run's iteration budget. Resumable like a :class:`ShardStream`: a slot's position is its number of draws
    and each part's position, and the same ``positions`` / ``first_slot`` / ``shuffle`` are handed to the parts."""

    def __init__(self, parts: List[IterableDataset], ratios: List[float], seed: int) -> None:
        if len(parts) != len(ratios) or any(r <= 0 for r in ratios):
            raise ValueError(f"one positive ratio per stream expected, got {ratios} for {len(parts)} streams")
        self.parts, self.seed = parts, seed
        self.cumulative = list(itertools.accumulate(r / sum(ratios) for r in ratios))
        self.samples_per_epoch = sum(getattr(p, "samples_per_epoch", 0) for p in parts)
        self.positions: Dict[int, Dict[str, Any]] = {}
        self.first_slot, self.shuffle, self.rank_world = 0, True, (dist.rank(), dist.world_size())

    def _draw(self, slot: int, n: int) -> int:
        """The part of a slot's ``n``-th draw: a function of (seed, slot, n), so a resume needs no replay."""
        digest = hashlib.blake2b(f"iterable-mixture/{self.seed}/{slot}/{n}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "little") / 2**64
        return min(bisect.bisect_right(self.cumulative, u), len(self.parts) - 1)

    def __iter__(self) -> Iterator[Any]:
        slot, _ = reader_slot(self.first_slot, self.rank_world)
        state = self.positions.get(slot, {"draws": 0, "parts": [None] * len(self.parts)})
        part_pos = list(state["parts"])
        for part, pos in zip(self.parts, part_pos):
            if isinstance(part, ShardStream):
                part.positions = {slot: pos} if pos else {}
                part.first_slot, part.shuffle, part.rank_world = self.first_slot, self.shuffle, self.rank_world
        draws = state["draws"]
        streams = [iter(p) for p in self.parts]
        while True:
            d = self._draw(slot, draws)
            draws += 1
            try:
                sample = next(streams[d])
            except StopIteration:
                streams[d] = iter(self.parts[d])
                sample = next(streams[d])
            if isinstance(sample, dict) and "_stream" in sample:
                part_pos[d] = sample["_stream"][1]
                sample["_stream"] = (slot, {"draws": draws, "parts": list(part_pos)})
            yield sample


def is_stream(data: Dataset) -> bool:
    return isinstance(data, IterableDataset)


def stream_loader(data: IterableDataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of a :class:`ShardStream` / :class:`IterableMixture`; each worker batches its own slot."""
    # its own generator: starting workers must not draw from the global RNG (see train_loader)
    return DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))


def set_stream_position(loader: DataLoader, positions: Dict[int, Any], batches_done: int, shuffle: bool) -> None:
    """Point a :func:`stream_loader` at the slots' ``positions`` after ``batches_done`` batches of this rank: batch
    ``n`` always comes from local slot ``n % workers``, so a restart continues the uninterrupted order."""
    data = loader.dataset
    data.positions, data.shuffle, data.rank_world = positions, shuffle, (dist.rank(), dist.world_size())
    data.first_slot = batches_done % max(loader.num_workers, 1)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process: no process group needed) that can skip the samples of this
    rank already consumed in the current epoch."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, drop_last: bool) -> None:
        super().__init__(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, shuffle: bool = True,
                 pin_memory: bool = False) -> DataLoader:
    """Seeded, resumable batches of a map-style data set; ``pin_memory`` (for CUDA) lets the copy to the device
    overlap the step."""
    data = SeededSamples(dataset, seed)
    sampler = ResumableSampler(data, shuffle=shuffle, seed=seed, drop_last=True)
    # its own generator: creating an iterator must not draw from the global RNG (dropout would then
    # depend on where in an epoch a run was resumed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      drop_last=True, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))


def set_position(loader: DataLoader, epoch: int, batches_done: int) -> None:
    """Point a :func:`train_loader` at ``epoch``, after its first ``batches_done`` batches."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = batches_done * loader.batch_size
    loader.dataset.set_epoch(epoch)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """In order; under torchrun each rank gets a strided share (padded to equal size: dedupe by ``index``)."""
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
