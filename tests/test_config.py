"""Config loading: _base_ inheritance, --options, validation errors naming key, file and close matches."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import toy_config, write_yaml

from framework.commands.train import main as train_main
from framework.core.config import load_config, to_plain
from framework.core.errors import ConfigError
from framework.engine.experiment import load_experiment


def test_three_level_base_chain_and_list_bases(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    write_yaml(tmp_path / "a" / "b" / "root.yaml", {"x": {"p": 1, "q": [1, 2]}, "keep": "root"})
    write_yaml(tmp_path / "a" / "mid.yaml", {"_base_": "b/root.yaml", "x": {"p": 2}, "mid": True})
    write_yaml(tmp_path / "other.yaml", {"x": {"q": [9]}, "other": 1.5})
    write_yaml(tmp_path / "top.yaml", {"_base_": ["a/mid.yaml", "other.yaml"], "x": {"r": "top"}})
    cfg, origins = load_config(tmp_path / "top.yaml")
    # deep merge; later bases win; lists are replaced; every level contributes
    assert cfg == {"x": {"p": 2, "q": [9], "r": "top"}, "keep": "root", "mid": True, "other": 1.5}
    assert origins["x.p"].endswith("mid.yaml") and origins["x.q"].endswith("other.yaml")
    assert origins["keep"].endswith("root.yaml")


def test_delete_marker_replaces_a_base_mapping(tmp_path: Path) -> None:
    write_yaml(tmp_path / "base.yaml", {"datasets": {"caption": {"size": 224}}, "run": {"seed": 1, "lr": 2}})
    write_yaml(tmp_path / "child.yaml", {"_base_": "base.yaml", "datasets": {"_delete_": True, "vqa": {"size": 224}},
                                         "run": {"seed": 3}})
    cfg, origins = load_config(tmp_path / "child.yaml")
    assert cfg["datasets"] == {"vqa": {"size": 224}}  # replaced, not merged
    assert cfg["run"] == {"seed": 3, "lr": 2}  # unmarked mappings still merge
    assert origins["datasets.vqa.size"].endswith("child.yaml") and "datasets._delete_" not in origins


def test_options_are_typed_and_win(tmp_path: Path) -> None:
    write_yaml(tmp_path / "c.yaml", {"a": {"b": "x"}})
    cfg, origins = load_config(tmp_path / "c.yaml", ["a.b=3", "a.f=0.5", "a.l=[1,2]", "a.n=null", "a.s=hello"])
    assert cfg["a"] == {"b": 3, "f": 0.5, "l": [1, 2], "n": None, "s": "hello"}
    assert origins["a.b"] == "--options"


def test_base_cycle_and_missing_base(tmp_path: Path) -> None:
    write_yaml(tmp_path / "x.yaml", {"_base_": "y.yaml"})
    write_yaml(tmp_path / "y.yaml", {"_base_": "x.yaml"})
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "x.yaml")
    write_yaml(tmp_path / "z.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist \(named in _base_ of .*z.yaml\)"):
        load_config(tmp_path / "z.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seed: 1\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_config(bad)


def _exp(tmp_path: Path, mutate=None, options=()):
    cfg = toy_config(tmp_path / "out")
    if mutate:
        mutate(cfg)
    path = write_yaml(tmp_path / "exp.yaml", cfg)
    return load_experiment(str(path), list(options))


def test_unknown_key_names_key_file_and_close_match(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _exp(tmp_path, lambda c: c["run"].update(batch_szie=4))
    msg = str(e.value)
    assert "run.batch_szie" in msg and "exp.yaml" in msg and "did you mean 'batch_size'" in msg


def test_unknown_key_inside_a_part(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _exp(tmp_path, lambda c: c["model"]["image_encoder"].update(widht=8))
    msg = str(e.value)
    assert "model.image_encoder.widht" in msg and "image_encoder 'conv_stem'" in msg and "'width'" in msg


def test_unknown_key_from_options_names_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.optimizer.lr_shedule.*did you mean 'lr_schedule'.*\(set in --options\)"):
        _exp(tmp_path, options=["run.optimizer.lr_shedule=3"])


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.batch_size: expected int, got 'eight' \(str\) \(set in .*exp.yaml\)"):
        _exp(tmp_path, lambda c: c["run"].update(batch_size="eight"))
    with pytest.raises(ConfigError, match=r"run.amp: expected one of 'off', 'bf16', 'fp16', got 'fp8'"):
        _exp(tmp_path, options=["run.amp=fp8"])


def test_unknown_registry_name_lists_names_and_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _exp(tmp_path, lambda c: c["model"]["image_encoder"].update(name="conv_stm"))
    msg = str(e.value)
    assert "unknown image_encoder 'conv_stm'; did you mean 'conv_stem'?" in msg
    assert "Registered image_encoder names: clip_vit_l, conv_stem, eva_vit_g." in msg and "model.image_encoder.name" in msg


def test_dataset_entry_keys_are_validated_against_the_builder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets.shapes_caption.image_sise.*did you mean 'image_size'"):
        _exp(tmp_path, lambda c: c["datasets"]["shapes_caption"].update(image_sise=3))
    with pytest.raises(ConfigError, match=r"datasets.my_set: dataset 'my_set' has no datasets_cfg entry"):
        _exp(tmp_path, lambda c: c["datasets"].update(my_set={}))


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'task'"):
        _exp(tmp_path, lambda c: c.pop("task"))


def test_cli_errors_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["--cfg", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    cfg = toy_config(tmp_path / "out")
    cfg["run"]["batch_szie"] = 3
    assert train_main(["--cfg", str(write_yaml(tmp_path / "e.yaml", cfg))]) == 2
    assert "batch_szie" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resolved_config_reproduces_the_run(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "out", max_iters=3)
    assert train_main(["--cfg", str(write_yaml(tmp_path / "exp.yaml", cfg))]) == 0
    written = tmp_path / "out" / "config.yaml"
    again = load_experiment(str(written))
    assert to_plain(again) == to_plain(load_experiment(str(tmp_path / "exp.yaml")))
    data = yaml.safe_load(written.read_text())
    assert data["run"]["optimizer"]["betas"] == [0.9, 0.999]  # defaults are written out, not implied
    assert data["datasets"]["shapes_caption"]["builder"] == "shapes"


def test_options_are_found_anywhere_on_the_command_line() -> None:
    from framework.commands.cli import pull_options

    assert pull_options(["--options", "a=1", "b.c=[1, 2]", "caption", "x.jpg", "--options", "d=e", "--json"]) == \
        (["caption", "x.jpg", "--json"], ["a=1", "b.c=[1, 2]", "d=e"])


def test_an_unquoted_off_is_named_as_yaml_reads_it(tmp_path: Path) -> None:
    """``run.amp=off``: YAML 1.1 reads it as false; the error says so and how to write it."""
    path = write_yaml(tmp_path / "c.yaml", toy_config(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"run.amp: .* got False \(YAML reads an unquoted off as False: quote it, "
                                          r"amp: 'off'\) \(set in --options\)"):
        load_experiment(str(path), ["run.amp=off"])
    assert load_experiment(str(path), ["run.amp='off'"]).run.amp == "off"
