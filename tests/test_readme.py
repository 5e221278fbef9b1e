"""Every block marked ``runnable`` in README.md and docs/ runs, in order, at tiny sizes: a README command cannot
break without this failing.

Each document runs in a fresh folder holding tiny stand-ins for every file the documents name (a transformers
BLIP-2 folder, LAVIS's stage-1 checkpoint, the EVA ViT-g, BERT and OPT weights under ``weights/``, photos,
JSON-lines records), all made here with random weights. A command runs as written, with the overrides of
:data:`TINY` appended where it would otherwise train or evaluate a real-size model or read real data, and
``torchrun --nproc_per_node=8`` on two CPU processes. A runnable command of a kind this file cannot run fails.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import torch
from helpers import REPO, TINY_VIT, random_photo, stage1_config
from tiny_bert import make_tiny_bert, vocab_size

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w+) runnable\n(.*?)^```", re.S | re.M)

PIXELS_32 = {"train": {"image": [{"name": "resize", "size": 32}, {"name": "normalize", "stats": "clip"}]},
             "eval": {"image": [{"name": "resize", "size": 32}, {"name": "normalize", "stats": "clip"}]}}
CPU_RUN = ["run.device=cpu", "run.amp='off'", "run.num_workers=0", "run.log_every=1", "run.tensorboard=false"]


def _flow(value) -> str:
    return json.dumps(value)  # JSON is YAML flow style: an --options value


def _tiny_models(bert: Path) -> List[str]:
    vit = {k: v for k, v in TINY_VIT.items() if k != "name"}
    qformer = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
               "vocab_size": vocab_size(bert), "max_position_embeddings": 64, "num_query_tokens": 4}
    return [f"model.image_encoder={_flow(vit)}", f"model.qformer={_flow(qformer)}"]


def _shapes(entry: str) -> str:
    return _flow({"_delete_": True, entry: {"image_size": 32, "num_images": {"train": 16, "val": 8, "test": 8},
                                            "processors": PIXELS_32}})


def tiny_overrides(bert: Path) -> List[Tuple[str, List[str]]]:
    """(a pattern of the command, the options appended to it): what makes a real-size command CPU-sized."""
    models = _tiny_models(bert)
    return [
        # the released models' precisions are for GPUs; the tiny stand-ins run in fp32 on the CPU
        (r"zoo prepare Salesforce/", ["model.image_encoder.precision=fp32", "model.llm.precision=fp32"]),
        # LAVIS's files do not hold the head counts (its EVA has 16, its BERT 12); the stand-ins have 4
        # and a LAVIS stage-1 file holds no ViT to read its size from: the stand-in's is given
        (r"zoo prepare pretrain ", ["model.qformer.num_heads=4", models[0]]),
        # the paper's VQAv2 evaluation of a prepared model: on the shapes questions
        (r"evaluate --cfg models/", [f"datasets={_shapes('shapes_vqa')}", "run.eval_batch_size=8"] + CPU_RUN),
        (r"--cfg mine(_ft)?\.yaml(?! --dry-run)", ["datasets.mine.image_size=32", "run.max_epochs=1",
                                                   "run.batch_size=4"] + CPU_RUN),
        (r"--cfg mine_instruct\.yaml(?! --dry-run)", ["datasets.my_qa.image_size=32", "datasets.my_descriptions.image_size=32",
                                                     "run.max_epochs=1", "run.batch_size=4"] + CPU_RUN),
        (r"torchrun .*stage1_vitg\.yaml", models + ["model.embed_dim=32", "model.max_txt_len=24",
                                                    f"datasets={_shapes('shapes_retrieval')}", "run.max_iters=2",
                                                    "run.batch_size=4"] + CPU_RUN),
        (r"torchrun .*stage2_opt2\.7b\.yaml", models + ["model.llm.arch=null", "model.llm.precision=fp32",
                                                        f"datasets={_shapes('shapes_caption')}", "run.max_iters=2",
                                                        "run.batch_size=4"] + CPU_RUN),
    ]


def runnable_blocks(document: Path) -> List[Tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(document.read_text())]


def commands(block: str) -> Iterator[List[str]]:
    """Each command line of a shell block (``\\``-continued lines joined, ``#`` comments dropped) as argv."""
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            yield argv


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny versions of every file the documents name, made once."""
    from helpers import write_yaml
    from tiny_llms import make_tiny_hf_blip2, make_tiny_hf_instructblip, make_tiny_opt

    from framework.engine.experiment import load_experiment
    from framework.models.build import build_model
    from plugins.formats.lavis import ours_to_lavis

    root = tmp_path_factory.mktemp("stand_ins")
    make_tiny_hf_blip2(root / "blip2-opt-2.7b", "opt_released")
    make_tiny_hf_instructblip(root / "instructblip-vicuna-7b", "vicuna")
    weights = root / "weights"
    make_tiny_bert(weights / "bert-base-uncased")
    make_tiny_opt(weights / "opt-2.7b")
    cfg = stage1_config(weights, root / "unused")  # its BERT: weights/bert-base-uncased's sizes
    cfg["model"]["qformer"]["bert"] = str(weights / "bert-base-uncased")
    torch.manual_seed(0)
    stage1 = build_model(load_experiment(str(write_yaml(root / "s1.yaml", cfg))).model)
    state = stage1.state_dict()
    torch.save({k.removeprefix("image_encoder.vit."): v for k, v in state.items() if k.startswith("image_encoder.")},
               weights / "eva_vit_g.pth")
    # as LAVIS released it: the trained weights only, the frozen ViT left out
    lavis = {k: v for k, v in ours_to_lavis(state, None).items() if not k.startswith("visual_encoder.")}
    torch.save({"model": lavis}, root / "blip2_pretrained.pth")
    for i in range(3):
        random_photo(root / "photos" / f"{i}.jpg", i)
    random_photo(root / "photo.jpg", 9)
    for split, n in (("train", 8), ("val", 4)):
        lines = []
        for i in range(n):
            random_photo(root / "my" / "photos" / f"{split}{i}.jpg", 100 + i)
            lines.append(json.dumps({"image": f"photos/{split}{i}.jpg", "caption": f"a photo number {i}"}))
        (root / "my" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    # the instruction-tuning recipe's two instruction sets, over the same photos
    for name, n, record in (("qa_train", 8, lambda i: {"instruction": f"What number is photo {i}?", "output": str(i)}),
                            ("qa_val", 4, lambda i: {"instruction": f"What number is photo {i}?", "output": str(i)}),
                            ("describe_train", 4, lambda i: {"instruction": "Describe the image.",
                                                             "outputs": ["random colours", "noise"]})):
        split = "val" if name == "qa_val" else "train"
        (root / "my" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"image": f"photos/{split}{i}.jpg", **record(i)}) + "\n" for i in range(n)))
    return root


# What each runnable command shows a reader, checked after it ran: (the command, matched against its line; the
# stream; a pattern that must be found there, filled from the command's named groups). A runnable command that no
# entry matches fails the test: a new command comes with what it prints.
EXPECTED = [
    (r"framework\.zoo prepare (?P<name>\S+) .*--out (?P<out>\S+)", "stdout",
     r"prepared {name} in {out}: from framework"),
    (r"framework\.zoo list", "stdout", r"Salesforce/blip2-opt-2\.7b .*\n +reproduces: "),
    (r"framework\.zoo show (?P<name>\S+)", "stdout", r"^{name}: .*\n(.*\n)*  files \(--src ROLE=PATH\):\n    model "),
    # every line: the image (of the folder), a tab, its caption (the random stand-in's may be empty or odd bytes)
    (r"framework\.predict .* caption (?P<images>\S+)", "stdout", r"\A({images}\S*\t[^\n]*\n)+\Z"),
    # one line: the image, a tab, the question, a tab, its answer
    (r"framework\.predict .* ask (?P<image>\S+) ", "stdout", r"\A{image}\t[^\t\n]+\t[^\n]*\n\Z"),
    (r"framework\.train .*--dry-run", "stdout", r"config OK\. model '\w+' \(built on the meta device\)(.*\n)+"
                                                r"data files:\n(.*\n)*  peak memory [\d.,]+ GiB"),
    (r"framework\.train --cfg \S+(?!.*--dry-run)", "stderr", r"INFO iter 1: loss [\d.]+"),
    (r"framework\.evaluate --cfg \S+", "stderr", r"INFO iteration \d+: [\w/-]+="),
]


# what each document's python block prints (README: a list of one caption and a list of one answer; the random
# stand-in model may well end its text at once, so the strings may be empty)
PYTHON_PRINTS = {"README.md": r"\['[^'\n]*'\] \['[^'\n]*'\]\n"}


def _expected(line: str) -> Tuple[str, str]:
    """(stream, pattern) the command ``line`` must print."""
    found = [(stream, pattern.format(**{k: re.escape(v) for k, v in m.groupdict().items()}))
             for command, stream, pattern in EXPECTED for m in [re.search(command, line)] if m]
    assert len(found) == 1, f"runnable command {line!r}: {len(found)} entries of EXPECTED say what it prints"
    return found[0]


def _run(argv: List[str], cwd: Path, overrides: List[Tuple[str, List[str]]]) -> None:
    line = " ".join(argv)
    stream, pattern = _expected(line)
    extra = [o for pattern, options in overrides if re.search(pattern, line) for o in options]
    if argv[0] == "torchrun":
        assert argv[1].startswith("--nproc_per_node=") and argv[2] == "-m", line
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               *argv[3:], *(["--options", *extra] if extra else [])]
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-4000:]}"
        shown = {"stdout": proc.stdout, "stderr": proc.stderr}
    else:
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("framework."), \
            f"a runnable command this test cannot run: {line}"
        main = importlib.import_module(argv[2]).main
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv[3:] + (["--options", *extra] if extra else []))
        assert rc == 0, f"{line}\n{out.getvalue()[-3000:]}\n{err.getvalue()[-3000:]}"
        shown = {"stdout": out.getvalue(), "stderr": err.getvalue()}
    assert re.search(pattern, shown[stream], re.M), f"{line}: its {stream} lacks {pattern!r}:\n{shown[stream][-3000:]}"


def _document_ids() -> List[str]:
    return [str(d.relative_to(REPO)) for d in DOCUMENTS if runnable_blocks(d)]


@pytest.mark.slow
@pytest.mark.parametrize("document", _document_ids())
def test_runnable_blocks_run(document: str, stand_ins: Path, tmp_path: Path, monkeypatch) -> None:
    for name in ("blip2-opt-2.7b", "instructblip-vicuna-7b", "weights", "photos", "photo.jpg", "my", "blip2_pretrained.pth"):
        (tmp_path / name).symlink_to(stand_ins / name)
    (tmp_path / "projects").symlink_to(REPO / "projects")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BLIP2_WEIGHTS", raising=False)  # the configs' default: ./weights
    overrides = tiny_overrides(stand_ins / "weights" / "bert-base-uncased")
    ran = 0
    for lang, block in runnable_blocks(REPO / document):
        if lang == "bash":
            for argv in commands(block):
                _run(argv, tmp_path, overrides)
                ran += 1
        elif lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"{document} (python block)", "exec"), {})
            assert document in PYTHON_PRINTS, f"{document}: say in PYTHON_PRINTS what its python block prints"
            assert re.fullmatch(PYTHON_PRINTS[document], out.getvalue()), out.getvalue()
            ran += 1
        elif lang == "yaml":
            name = block.splitlines()[0].removeprefix("#").strip()
            assert re.fullmatch(r"[\w.]+\.yaml", name), f"{document}: a runnable YAML block starts with '# FILE.yaml'"
            (tmp_path / name).write_text(block)
        else:
            pytest.fail(f"{document}: a runnable block in {lang!r}; runnable blocks are bash, python or yaml")
    assert ran


def test_the_runnable_documents_are_the_expected_ones() -> None:
    """A document whose runnable marks were lost would silently drop out of the test above."""
    assert set(_document_ids()) == {"README.md", "docs/weights.md", "docs/recipes/pretrain_8gpu.md",
                                    "docs/recipes/finetune_jsonl.md", "docs/recipes/instruction_tuning.md",
                                    "docs/recipes/big_llms.md", "docs/recipes/fsdp_multi_node.md"}
    readme = [c for lang, b in runnable_blocks(REPO / "README.md") if lang == "bash" for c in commands(b)]
    assert ["python", "-m", "framework.train", "--cfg", "mine.yaml"] in readme
