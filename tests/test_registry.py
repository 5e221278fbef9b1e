"""Registries: decorator registration, duplicate and unknown names, and the three ways to find plugins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, toy_config, write_yaml

from framework.core.errors import RegistryError
from framework.core.registry import (
    ENTRY_POINT_GROUP,
    IMAGE_ENCODERS,
    Registry,
    load_plugin_modules,
)


def test_unknown_name_lists_registered_names_and_closest_match() -> None:
    with pytest.raises(RegistryError) as e:
        IMAGE_ENCODERS.get("convstem")
    msg = str(e.value)
    assert "unknown image_encoder 'convstem'; did you mean 'conv_stem'?" in msg
    assert "Registered image_encoder names: clip_vit_l, conv_stem, eva_vit_g." in msg and ENTRY_POINT_GROUP in msg


def test_duplicate_name_names_both_definitions() -> None:
    reg = Registry("thing")

    @reg.register("a")
    def first() -> None: ...

    with pytest.raises(RegistryError) as e:
        @reg.register("a")
        def second() -> None: ...
    msg = str(e.value)
    assert "duplicate thing name 'a'" in msg
    import re

    lines = re.findall(re.escape(__file__) + r":(\d+)", msg)
    assert len(lines) == 2 and int(lines[0]) < int(lines[1])  # both definitions, by file and line


def test_plugins_list_error_names_module(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ImportError, match="config 'plugins:' lists module 'no_such_plugin_mod'"):
        load_plugin_modules(["no_such_plugin_mod"])
    # a listed module whose own code fails: its traceback, not "cannot be imported"
    (tmp_path / "my_listed_plugin.py").write_text("import os\nimport no_such_dependency_of_mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as e:
        load_plugin_modules(["my_listed_plugin"])
    assert "config 'plugins:' module 'my_listed_plugin' failed to import" in str(e.value)
    assert f'{tmp_path / "my_listed_plugin.py"}", line 2' in str(e.value)
    assert "No module named 'no_such_dependency_of_mine'" in str(e.value)


def test_framework_imports_no_concrete_plugin() -> None:
    for path in (REPO / "framework").rglob("*.py"):
        text = path.read_text()
        assert "from plugins" not in text and "import plugins." not in text.replace("import plugins\n", ""), path


ENCODER_PKG = '''
import torch
from torch import nn
from framework.core.registry import IMAGE_ENCODERS


@IMAGE_ENCODERS.register("ext_patch_encoder")
class PatchEncoder(nn.Module):
    def __init__(self, width: int = 8, patch: int = 8):
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.num_features = width

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)
'''


@pytest.mark.slow
def test_entry_point_package_outside_the_repo_adds_an_image_encoder(tmp_path: Path) -> None:
    """An installed package (a dist-info with entry_points.txt on sys.path, as pip writes it) registers an
    encoder; a YAML uses it by name and trains, with nothing changed in framework/ or plugins/."""
    site = tmp_path / "site"
    (site / "ext_encoders").mkdir(parents=True)
    (site / "ext_encoders" / "__init__.py").write_text(ENCODER_PKG)
    info = site / "ext_encoders-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-encoders\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\next = ext_encoders\n")
    cfg = toy_config(tmp_path / "out", max_iters=2)
    cfg["model"]["image_encoder"] = {"name": "ext_patch_encoder", "width": 12}
    path = write_yaml(tmp_path / "exp.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, "-m", "framework.train", "--cfg", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["model"]["image_encoder"] == {
        "name": "ext_patch_encoder", "width": 12, "patch": 8}
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r["event"] == "train"] == [1, 2]


@pytest.mark.slow
def test_a_plugin_module_that_raises_fails_only_a_config_that_names_its_parts(tmp_path: Path) -> None:
    """An installed plugin package with a good module and one whose code raises at import: a config that uses
    the good one trains (the broken module is never imported: parts load by name); one that names the broken
    module's part fails before any work with an error that holds the module's traceback, its file and line."""
    site = tmp_path / "site"
    pkg = site / "ext_parts"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(ENCODER_PKG)
    (pkg / "broken.py").write_text(ENCODER_PKG.replace("ext_patch_encoder", "ext_broken_encoder").replace(
        "from framework.core.registry import IMAGE_ENCODERS", "from framework.core.registry import IMAGE_ENCODERS\n"
        "raise RuntimeError('the plugin author made a mistake here')"))
    info = site / "ext_parts-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-parts\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\next = ext_parts\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests")])}
    runs = {}
    for encoder in ("ext_patch_encoder", "ext_broken_encoder"):
        cfg = toy_config(tmp_path / encoder, max_iters=1)
        cfg["model"]["image_encoder"] = {"name": encoder}
        runs[encoder] = subprocess.run([sys.executable, "-m", "framework.train", "--cfg",
                                        str(write_yaml(tmp_path / f"{encoder}.yaml", cfg))], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=300)
    good, bad = runs["ext_patch_encoder"], runs["ext_broken_encoder"]
    assert good.returncode == 0, good.stderr[-3000:]
    assert "ext_parts.broken" not in good.stderr  # parts load by name: the broken module was never run
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert ("image_encoder 'ext_broken_encoder' is registered by plugin module ext_parts.broken, which failed to "
            "import") in bad.stderr and "Traceback" in bad.stderr
    assert "importlib" not in bad.stderr  # the author's frames, not the import machinery's
    assert f'{pkg / "broken.py"}", line 5' in bad.stderr  # where the author's code raised
    assert "RuntimeError: the plugin author made a mistake here" in bad.stderr
    assert not (tmp_path / "ext_broken_encoder").exists()  # failed before any work


def test_a_part_is_imported_by_its_name_alone() -> None:
    """Discovery reads the plugin modules' registrations without running them; asking for a part imports the
    module that registers it (and what that module imports), not the others."""
    code = ("import sys; from framework.core.registry import IMAGE_ENCODERS; IMAGE_ENCODERS.get('eva_vit_g'); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('plugins.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    assert "plugins.image_encoders.eva_vit" in loaded
    assert not [m for m in loaded if m.startswith(("plugins.llms.", "plugins.tasks.", "plugins.models."))], loaded
