"""The shape of the tree: framework/ knows no plugin, errors are a leaf, models do not pull in the config loader."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from framework.parts import main as parts_main


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
    assert parts_main(["image_encoder"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("image_encoder (") and "  eva_vit_g    [plugins/image_encoders/eva_vit.py]" in out
    assert "      image_size: int >= 1 = 224" in out and "      precision: one of 'fp32', 'fp16', 'bf16' = 'fp16'" in out
    assert parts_main(["model"]) == 0
    out = capsys.readouterr().out
    assert "      qformer:\n        hidden_size: int >= 1 = 768" in out and "llm: Part(llm) required" in out
    assert parts_main(["bogus"]) == 2
    assert "no registry 'bogus'; the kinds: image_encoder, llm, model" in capsys.readouterr().err


def test_registry_listing_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "framework.parts", "lr_scheduler"], cwd=REPO, capture_output=True,
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


def _module_graph() -> dict:
    """Module name -> the framework/ and plugins/ modules it imports (at any level: top, function body)."""
    files = {}
    for root in ("framework", "plugins"):
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from framework import cli` imports the module framework.cli; `from framework.x import y`, framework.x
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files}
                found |= {node.module} & files.keys()
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names} & files.keys()
        graph[name] = found - {name, "framework", "plugins"}
    return graph


def _commands() -> set:
    """The command modules: each runs as ``python -m framework.X``; ``framework.cli`` is what they share."""
    return {f"framework.{p.stem}" for p in (REPO / "framework").glob("*.py")
            if 'if __name__ == "__main__":' in p.read_text()} | {"framework.cli"}


def test_the_library_imports_no_command() -> None:
    """The library (framework/ below the commands, and plugins/) never reaches up into a command; a command uses
    the library and ``framework.cli``, not another command."""
    graph, commands = _module_graph(), _commands()
    assert {"framework.train", "framework.convert", "framework.zoo", "framework.parts"} <= commands
    up = {m: sorted(graph[m] & commands) for m in graph if m not in commands and graph[m] & commands}
    assert up == {}
    across = {m: sorted(graph[m] & commands - {"framework.cli"}) for m in commands
              if graph[m] & commands - {"framework.cli"}}
    assert across == {}


def test_no_modules_import_each_other_in_a_circle() -> None:
    """No cycle among framework/ and plugins/ modules (imports inside functions count: a cycle hidden in a
    function is still two modules that cannot be understood apart)."""
    graph = _module_graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []
