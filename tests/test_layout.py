"""The shape of the tree: framework/ knows no plugin, errors are a leaf, models do not pull in the config loader."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.commands.parts import main as parts_main
from helpers import REPO


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
    assert {m for m in _imports(REPO / "framework" / "core" / "errors.py") if m.startswith("framework")} == set()
    code = ("import sys, framework.models.blip2, plugins.models.blip2_qformer, plugins.models.blip2_generative, "
            "plugins.datasets.records; print('omegaconf' in sys.modules, 'framework.core.config' in sys.modules)")
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
    out = subprocess.run([sys.executable, "-m", "framework.parts", "lr_scheduler"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("lr_scheduler (2 registered)") and "  linear_warmup_cosine    [" in out
    assert "      warmup_iters: int >= 0 = 0" in out


def test_no_framework_module_names_a_registered_part() -> None:
    """framework/ reaches parts through the registries only: no string in it is a registered name (convert.py
    included: the formats are parts too)."""
    from framework.core.registry import REGISTRIES, discover_plugins

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
                # `from framework.core import dist` imports the module framework.core.dist; `from framework.x import y`,
                # framework.x
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files}
                found |= {node.module} & files.keys()
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names} & files.keys()
        graph[name] = found - {name, "framework", "plugins"}
    return graph


def _commands() -> set:
    """The command modules (``framework/commands/``, ``cli`` what they share) and their entry points: ``python -m
    framework.X`` runs ``framework/X.py``, which hands over to ``framework.commands.X``."""
    inside = {f"framework.commands.{p.stem}" for p in (REPO / "framework" / "commands").glob("*.py")
              if p.stem != "__init__"}
    return inside | {"framework.commands"} | _entry_points()


def _entry_points() -> set:
    return {f"framework.{p.stem}" for p in (REPO / "framework").glob("*.py") if p.stem not in ("__init__", "api")}


def test_the_library_imports_no_command() -> None:
    """The library (framework/ below the commands, and plugins/) never reaches up into a command; a command uses
    the library and ``framework.commands.cli``, not another command."""
    graph, commands = _module_graph(), _commands()
    assert {"framework.commands.train", "framework.commands.convert", "framework.commands.zoo",
            "framework.commands.parts", "framework.train"} <= commands
    up = {m: sorted(graph[m] & commands) for m in graph if m not in commands and graph[m] & commands}
    assert up == {}
    shared = {"framework.commands.cli", "framework.commands"}
    across = {m: sorted(graph[m] & commands - shared) for m in commands - _entry_points()
              if graph[m] & commands - shared}
    assert across == {}


# framework/'s packages, lowest first: a module imports from its own package or one below it. core is what every
# layer uses (errors, registries, config, processes, logs, the checkpoint file); data and models are the parts'
# bases; engine runs an experiment; interop converts foreign weights into built models; api is the Python entry;
# commands are the CLIs, and framework/X.py the entry points of ``python -m framework.X``.
LAYERS = ("core", "data", "models", "engine", "interop", "api", "commands", "entry points")


def _layer(module: str) -> str:
    part = module.split(".")[1] if module.count(".") else ""
    if part in LAYERS:
        return part
    return "entry points" if f"framework.{part}" in _entry_points() else "package"


def test_the_packages_of_framework_are_layers() -> None:
    """The folders tell the architecture: no package imports one above it (imports inside functions count), so
    core reads without data or models, models without the engine, the engine without the converters."""
    graph = _module_graph()
    inside = {m for m in graph if m.startswith("framework.")}
    assert {_layer(m) for m in inside} == set(LAYERS), "a module of framework/ outside the packages of LAYERS"
    upward = {m: sorted(d for d in graph[m] if d.startswith("framework.")
                        and LAYERS.index(_layer(d)) > LAYERS.index(_layer(m)))
              for m in inside}
    assert {m: v for m, v in upward.items() if v} == {}


def test_the_top_of_framework_holds_the_api_and_one_entry_point_per_command() -> None:
    """``framework/X.py`` (``python -m framework.X``) only hands over to ``framework.commands.X``: the commands,
    their shared helper and the library live in the packages."""
    commands = {p.stem for p in (REPO / "framework" / "commands").glob("*.py")} - {"__init__", "cli"}
    assert {m.split(".")[1] for m in _entry_points()} == commands
    for name in commands:
        path = REPO / "framework" / f"{name}.py"
        imported = {m for m in _imports(path) if m.startswith("framework")}
        assert imported == {f"framework.commands.{name}"}, path
        assert len(path.read_text().splitlines()) <= 8, f"{path} is an entry point: it holds no code of its own"
    proc = subprocess.run([sys.executable, "-m", "framework.convert", "--help"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--from" in proc.stdout


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


def test_every_shipped_config_is_installed_by_pyproject() -> None:
    """A plain ``pip install .`` carries datasets_cfg/ and projects/ as data files (``framework/core/resources.py``
    finds them): every file in them must match a ``[tool.setuptools.data-files]`` pattern of its folder."""
    import fnmatch

    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    patterns = [p for ps in data_files.values() for p in ps]
    shipped = [f.relative_to(REPO).as_posix() for d in ("datasets_cfg", "projects") for f in (REPO / d).rglob("*")
               if f.is_file()]
    assert shipped and [f for f in shipped if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/")
                                                      for p in patterns)] == []
    for target, ps in data_files.items():  # each pattern lands in the same folder under share/blip2-framework
        assert all(target == "share/blip2-framework/" + p.rsplit("/", 1)[0] for p in ps), target


@pytest.mark.slow
def test_a_plain_pip_install_runs_the_readme_dry_run_from_another_folder(tmp_path: Path) -> None:
    """``pip install .`` (not editable) into a fresh venv, then ``python -m framework.train --cfg
    projects/blip2/stage1_vitg.yaml --dry-run`` in an empty folder: the package, its plugins and the shipped
    configs all come from the install, none from this checkout. The venv reaches this one's site-packages for
    torch and the rest (a .pth line), so nothing is downloaded but the build backend."""
    import shutil
    import sysconfig

    src = tmp_path / "src"  # a copy: pip builds in the source tree and would leave build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "framework", "plugins", "datasets_cfg", "projects"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BLIP2_ROOT")}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(src)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(src)  # nothing may be read from the source tree any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import framework, plugins; print(framework.__file__, plugins.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.count(str(site)) == 2, where
    dry = subprocess.run([python, "-m", "framework.train", "--cfg", "projects/blip2/stage1_vitg.yaml", "--dry-run",
                          "--no-cost"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "config OK. model 'blip2_qformer'" in dry.stdout and "total            1,172,599,998" in dry.stdout
    assert "coco_caption_shards: train shards (114 files" in dry.stdout  # datasets_cfg/ read from the install


def test_the_checkpoint_format_knows_no_model_and_the_registry_no_config() -> None:
    """Checkpoint files and the registries sit below what uses them: ``framework.core.checkpoint`` imports nothing of
    ``framework.models`` (a model's checkpoint is made by ``models.build.checkpoint_of``), ``framework.core.registry``
    nothing of ``framework.core.config`` (the listing of parts is the command ``framework.parts``)."""
    graph = _module_graph()
    assert {m for m in graph["framework.core.checkpoint"] if m.startswith("framework.models")} == set()
    assert "framework.core.config" not in graph["framework.core.registry"]
