"""`treepo-lab paper`: the findings file and the paper spec (arms differ only in the knobs each finding names),
and the command on a tiny budget (one finding: 2 experiments x 2 warm starts x 2 seeds, 2 steps) into temporary
stores, run twice (the second run resumes: no run is repeated), its report re-derived from runs.csv."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from treepo_lab.analysis import findings as fnd
from treepo_lab.analysis import runs_table
from treepo_lab.config import list_experiments
from treepo_lab.commands.paper import paper as cmd_paper

ROOT = Path(__file__).resolve().parent.parent
FINDINGS_VERDICT = fnd.FINDINGS_COLUMNS.index("verdict per update")


def first_table(md: str) -> list[str]:
    block = md.split("## Findings", 1)[1].split("\n\n")
    return next(b for b in block if b.startswith("|")).strip().splitlines()


def test_findings_file_is_valid_and_names_registry_experiments():
    found = fnd.load_findings(ROOT / "analysis" / "findings.yaml", list_experiments())
    assert {"treepo_vs_grpo", "subgroup_rejection", "fallback_helps"} <= {f.id for f in found}


@pytest.mark.slow
def test_paper_on_a_tiny_budget(tmp_path, ws_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tiny = {"warmstart.steps": 30, "warmstart.eval_size": 0, "warmstart.batch_size": 16, "warmstart.cache_dir": ws_cache,
            "trainer.steps": 2, "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 1, "trainer.warmup_steps": 0,
            "trainer.eval_every": 1, "trainer.output_dir": str(tmp_path / "runs"), "sampler.width": 4,
            "sampler.max_depth": 4, "sampler.segment_len": 8, "sampler.fallback_block_size": 8, "eval.n_problems": 4,
            "eval.batch_size": 4, "reward.dynamic_sampling": False, "reward.overlong_buffer": 24,
            "tracking.system_metrics": False, "tracking.log_trees_every": 0, "sweep.name": "paper_tiny"}
    args = ["--only", "treepo_vs_grpo", "--seeds", "2", "--workers", "2", "--tracking-uri", uri, "--out", "paper",
            *[f"{k}={v}" for k, v in tiny.items()]]
    assert cmd_paper(args, out=io.StringIO()) == 0
    md = (tmp_path / "paper" / "report.md").read_text()
    header, _, *rows = first_table(md)
    assert [c.strip() for c in header.strip("|").split("|")] == fnd.FINDINGS_COLUMNS
    assert len(rows) == 1 and "treepo_fixed_init vs grpo" in rows[0] and "4/4 (4 paired)" in rows[0]  # 2 seeds x 2 warm starts
    verdict = [c.strip() for c in rows[0].strip("|").split("|")][FINDINGS_VERDICT]
    assert verdict in fnd.VERDICTS
    assert (tmp_path / "paper" / "report.html").is_file() and list((tmp_path / "paper" / "figures").glob("*.pdf"))
    assert "MDE at 80% power" in md and "## Per warm start" in md
    # no machine path in any report, and the CSV beside it re-derives the findings table exactly
    for page in (tmp_path / "paper").rglob("report.*"):
        text = page.read_text()
        assert "/tmp" not in text and str(tmp_path) not in text and "sqlite:////" not in text, page
    table = runs_table.read(tmp_path / "paper" / "runs.csv")
    assert set(table["experiment"]) == {"treepo_fixed_init", "grpo"} and table["cpu_s"].notna().all()
    again = ["--only", "treepo_vs_grpo", "--report-only", "--from-csv", "paper/runs.csv", "--out", "again"]
    assert cmd_paper(again, out=io.StringIO()) == 0
    assert first_table((tmp_path / "again" / "report.md").read_text()) == first_table(md)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("paper_tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("treepo.experiment")]) == 8  # the chain_mid block not needed
    # again: the study resumes with nothing left, no run is repeated, the report is rewritten
    assert cmd_paper(args, out=io.StringIO()) == 0
    assert len(client.search_runs([exp.experiment_id])) == len(runs)


def test_paper_arms_differ_from_their_references_only_in_the_named_knobs():
    """Every finding of analysis/findings.yaml compares arms of sweeps/paper.yaml whose composed configs differ in
    its declared knobs and nothing else (the seed and the warm-start seed being replicates)."""
    from treepo_lab.analysis.endpoints import PAIR_KNOB
    from treepo_lab.analysis.runs_table import NOT_KNOBS
    from treepo_lab.sweep.space import SEED_PARAM, trial_config, units
    from treepo_lab.sweep.spec import load_spec
    from treepo_lab.track.naming import run_params

    spec = load_spec(ROOT / "sweeps" / "paper.yaml")
    configs = {}
    for unit in units(spec):
        point = {k: v for k, v in unit.items() if k != SEED_PARAM}
        key = tuple(sorted(point.items()))
        if key not in configs:
            configs[key] = run_params(trial_config(spec, point, 0))
    knobs = lambda c: {k: v for k, v in c.items() if not k.startswith(NOT_KNOBS) and k != PAIR_KNOB}
    for f in fnd.load_findings(ROOT / "analysis" / "findings.yaml", list_experiments()):
        def arm(name, f=f):
            out = [c for p, c in configs.items() if dict(p)["experiment"] == name
                   and all(c.get(k) == v for k, v in f.where)]
            assert out, f"{f.id}: no arm of sweeps/paper.yaml runs {name} where {dict(f.where)}"
            return [knobs(c) for c in out]
        for a in arm(f.experiment):
            for b in arm(f.reference):
                diff = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
                assert diff and diff <= set(f.knobs), (f.id, sorted(diff - set(f.knobs)) or "identical configs")
