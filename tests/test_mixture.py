"""Several training sets in one run, drawn in given ratios (the paper's pretraining mix)."""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

from helpers import SMALL_SHAPES, read_log, toy_config, write_yaml

from framework.commands.train import main as train_main
from framework.data.loader import Mixture


class Tagged:
    def __init__(self, tag: str, n: int) -> None:
        self.tag, self.n = tag, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.tag, i


def test_each_set_gets_its_ratio_of_the_draws() -> None:
    mix = Mixture([Tagged("big", 1000), Tagged("mid", 100), Tagged("small", 10)], [6, 3, 1], seed=0)
    counts: Counter = Counter()
    for epoch in range(20):  # 20 x 1110 draws
        mix.set_epoch(epoch)
        counts.update(mix[i][0] for i in range(len(mix)))
    total = sum(counts.values())
    # tolerance 1.5 points: 4.5 standard deviations of a share near 0.6 over 22,200 draws
    for tag, ratio in (("big", 0.6), ("mid", 0.3), ("small", 0.1)):
        assert abs(counts[tag] / total - ratio) < 0.015, counts


def test_the_draw_is_a_function_of_seed_and_epoch_and_parts_are_served_in_permutation() -> None:
    a = Mixture([Tagged("x", 50), Tagged("y", 50)], [1, 1], seed=3)
    b = Mixture([Tagged("x", 50), Tagged("y", 50)], [1, 1], seed=3)
    first = [a[i] for i in range(len(a))]
    assert first == [b[i] for i in range(len(b))]
    a.set_epoch(1)
    assert [a[i] for i in range(len(a))] != first
    xs = [i for tag, i in first if tag == "x"]
    assert len(set(xs[:50])) == min(len(xs), 50)  # no repeat before every sample of a part was served


def test_a_run_mixes_two_entries_and_partial_ratios_are_an_error(tmp_path: Path, capsys) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=3)
    other = copy.deepcopy(SMALL_SHAPES) | {"builder": "shapes", "annotations": "caption", "seed": 1,
                                           "sample_ratio": 1.0}
    cfg["datasets"]["shapes_caption"]["sample_ratio"] = 3.0
    cfg["datasets"]["more_shapes"] = other
    assert train_main(["--cfg", str(write_yaml(tmp_path / "mix.yaml", cfg))]) == 0
    assert len(read_log(tmp_path / "out")) == 3
    del cfg["datasets"]["more_shapes"]["sample_ratio"]
    cfg["run"]["output_dir"] = str(tmp_path / "bad")
    assert train_main(["--cfg", str(write_yaml(tmp_path / "bad.yaml", cfg))]) == 2
    assert "sample_ratio is set for some entries; give every entry a positive one" in capsys.readouterr().err


def test_streams_are_drawn_in_their_ratios_and_restart_when_they_end() -> None:
    from itertools import islice

    from torch.utils.data import IterableDataset

    from framework.data.loader import IterableMixture

    class Stream(IterableDataset):
        def __init__(self, tag: str, n: int) -> None:
            self.tag, self.n = tag, n

        def __iter__(self):
            return ((self.tag, i) for i in range(self.n))

    mix = IterableMixture([Stream("a", 7), Stream("b", 1000)], [1, 3], seed=0)
    draws = list(islice(iter(mix), 20000))
    share = sum(tag == "a" for tag, _ in draws) / len(draws)
    assert abs(share - 0.25) < 0.015  # 4.9 standard deviations over 20,000 draws
    a = [i for tag, i in draws if tag == "a"]
    assert a[:14] == list(range(7)) * 2  # the short stream starts again where it ended
    assert draws == list(islice(iter(mix), 20000))  # a function of the seed
