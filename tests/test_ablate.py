"""A two-variant study end to end: tables from the runs' own records, a rerun trains nothing, a failing
variant is marked failed while the others finish."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import REPO, toy_config, write_yaml
from run_scripts.ablate import main as ablate_main

METRIC = "shapes_caption/val/loss"


@pytest.mark.slow
def test_two_variant_study_tables_rerun_and_failure(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    base = write_yaml(tmp_path / "base.yaml", toy_config(tmp_path / "unused", max_iters=4, eval_every=2))
    study = write_yaml(tmp_path / "study.yaml", {
        "base": str(base), "output_dir": str(tmp_path / "study"), "seeds": [0, 1], "metrics": [METRIC],
        "variants": {"fast": {"options": ["run.optimizer.lr=0.05"]}, "slow": {"options": ["run.optimizer.lr=0.0001"]},
                     "broken": {"options": ["run.max_itres=3"]}}})
    assert ablate_main([str(study)]) == 1  # one variant failed
    results = json.loads((tmp_path / "study" / "results.json").read_text())["summary"]
    for name in ("fast", "slow"):
        finals = []
        for seed in (0, 1):
            run = tmp_path / "study" / name / f"seed{seed}"
            evals = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"eval"' in x]
            assert [e["iter"] for e in evals] == [2, 4]
            finals.append(evals[-1][METRIC])
            best = json.loads((run / "metrics.json").read_text())["best"]
            assert best["metric"] == METRIC and best["value"] == min(e[METRIC] for e in evals)
        assert results[name][METRIC]["values"] == finals
        assert results[name][METRIC]["mean"] == pytest.approx(sum(finals) / 2)
    assert results["fast"][METRIC]["mean"] != results["slow"][METRIC]["mean"]
    assert results["broken"]["seeds"] == [] and "unknown key 'max_itres'" in results["broken"]["errors"][0]
    table = (tmp_path / "study" / "table.md").read_text()
    assert f"{results['fast'][METRIC]['mean']:.4g}" in table and "| broken | failed — " in table
    assert (tmp_path / "study" / "shapes_caption_val_loss.png").stat().st_size > 1000
    csv_rows = (tmp_path / "study" / "table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("variant,seeds,shapes_caption/val/loss mean") and len(csv_rows) == 4

    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").glob("*/seed*/log.jsonl")}
    capsys.readouterr()
    assert ablate_main([str(study)]) == 1  # the broken variant is tried again, and fails again
    assert capsys.readouterr().out.count("already done") == 4
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # nothing trained again
    assert (tmp_path / "study" / "table.md").read_text() == table  # the same table
    assert json.loads((tmp_path / "study" / "results.json").read_text())["summary"] == results


def test_a_typo_in_a_study_names_the_key(tmp_path: Path, capsys) -> None:
    study = write_yaml(tmp_path / "study.yaml", {"base": "x.yaml", "output_dir": "o", "metrics": ["m"],
                                                 "variants": {"a": {"option": ["run.seed=1"]}}})
    assert ablate_main([str(study)]) == 2
    assert "variants.a.option" in capsys.readouterr().err
