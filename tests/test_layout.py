"""The shape of the tree: framework/ knows no plugin, errors are a leaf, models do not pull in the config loader."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from framework.registry import main as registry_main


def _imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_framework_module_imports_a_plugin() -> None:
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m == "plugins" or m.startswith("plugins."))
                 for p in (REPO / "framework").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_errors_are_a_leaf_and_models_do_not_import_the_config_loader() -> None:
    assert {m for m in _imports(REPO / "framework" / "errors.py") if m.startswith("framework")} == set()
    code = ("import sys, framework.models.blip2, plugins.models.blip2_qformer, plugins.models.blip2_generative, "
            "plugins.datasets.records; print('omegaconf' in sys.modules, 'framework.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_registry_lists_the_parts_with_their_keys(capsys) -> None:
    assert registry_main(["image_encoder"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("image_encoder (") and "  eva_vit_g    [plugins/image_encoders/eva_vit.py]" in out
    assert "      image_size: int >= 1 = 224" in out and "      precision: one of 'fp32', 'fp16', 'bf16' = 'fp16'" in out
    assert registry_main(["model"]) == 0
    out = capsys.readouterr().out
    assert "      qformer:\n        hidden_size: int >= 1 = 768" in out and "llm: Part(llm) required" in out
    assert registry_main(["bogus"]) == 2
    assert "no registry 'bogus'; the kinds: image_encoder, llm, model" in capsys.readouterr().err


def test_registry_listing_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "framework.registry", "lr_scheduler"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("lr_scheduler (2 registered)") and "  linear_warmup_cosine    [" in out
    assert "      warmup_iters: int >= 0 = 0" in out


def test_no_framework_module_names_a_registered_part() -> None:
    """framework/ reaches parts through the registries only: no string in it is a registered name (convert.py
    included: the formats are parts too)."""
    from framework.registry import REGISTRIES, discover_plugins

    discover_plugins()
    names = {n for r in REGISTRIES.values() for n in r.names()}
    offenders = {}
    for path in (REPO / "framework").rglob("*.py"):
        strings = {node.value for node in ast.walk(ast.parse(path.read_text(), str(path)))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        if strings & names:
            offenders[str(path.relative_to(REPO))] = sorted(strings & names)
    assert offenders == {}
