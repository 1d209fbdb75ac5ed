"""`treepo-lab paper`: the findings file's checks, verdicts read from the intervals, the seeds-needed note, and
the command on a tiny budget (2 experiments, 2 seeds, 2 steps) into temporary stores, run twice (the second
run resumes: no run is repeated)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from treepo_lab.analysis import findings as fnd
from treepo_lab.sweep.paper import cmd_paper
from treepo_lab.analysis.stats import Interval
from treepo_lab.config import list_experiments
from treepo_lab.registry import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_findings_file_is_valid_and_names_registry_experiments():
    found = fnd.load_findings(ROOT / "analysis" / "findings.yaml", list_experiments())
    assert {"treepo_vs_grpo", "subgroup_rejection", "fallback_helps"} <= {f.id for f in found}


@pytest.mark.parametrize("text, key", [
    ("findings: []", "findings"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, direction: up}]", r"findings\[0\].direction"),
    ("findings: [{id: a, claim: c, experiment: nope, reference: grpo, direction: higher}]", r"findings\[0\].experiment"),
    ("findings: [{id: a, claim: c, experiment: grpo, direction: higher}]", r"findings\[0\].reference"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, direction: higher, x: 1}]", r"findings\[0\].x"),
])
def test_bad_findings_name_the_field(tmp_path, text, key):
    (tmp_path / "f.yaml").write_text(text)
    with pytest.raises(ConfigError, match=key):
        fnd.load_findings(tmp_path / "f.yaml", list_experiments())


def test_verdict_comes_from_the_interval():
    assert fnd.verdict(Interval(0.05, 0.01, 0.09, 5), "higher") == "reproduced"
    assert fnd.verdict(Interval(0.05, 0.01, 0.09, 5), "lower") == "refuted"
    assert fnd.verdict(Interval(-0.05, -0.09, -0.01, 5), "lower") == "reproduced"
    assert fnd.verdict(Interval(0.05, -0.01, 0.09, 5), "higher") == "seeds cannot separate"
    assert fnd.verdict(Interval(0.05, math.nan, math.nan, 1), "higher") == "seeds cannot separate"


def test_seeds_needed_scales_with_the_interval():
    # half-width 0.04 at 5 seeds, difference 0.02: (0.04/0.02)^2 * 5 = 20 seeds
    assert fnd.seeds_needed(Interval(0.02, -0.02, 0.06, 5)) == 20
    assert fnd.seeds_needed(Interval(0.0, -0.02, 0.02, 5)) == math.inf
    assert fnd.seeds_needed(Interval(0.1, 0.09, 0.11, 5)) == 2


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
    first = md.split("## Findings", 1)[1].split("\n\n", 2)[1]  # the first table of the report
    header, _, *rows = first.strip().splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == fnd.FINDINGS_COLUMNS
    assert len(rows) == 1 and "treepo_fixed_init vs grpo" in rows[0] and "2/2" in rows[0]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    delta, said = cells[4], cells[-1]
    if "[" in delta:  # the verdict is the one its interval gives
        low, high = (float(v) / 100 for v in delta.split("[")[1].rstrip("]").split(","))
        assert said == fnd.verdict(Interval(float(delta.split()[0]) / 100, low, high, 2), "higher")
    else:
        assert said.startswith("seeds cannot separate")
    assert (tmp_path / "paper" / "report.html").is_file() and list((tmp_path / "paper" / "figures").glob("*.pdf"))
    assert "seeds needed for 95%" in md
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("paper_tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("treepo.experiment")]) == 4
    # again: the study resumes with nothing left, no run is repeated, the report is rewritten
    assert cmd_paper(args, out=io.StringIO()) == 0
    assert len(client.search_runs([exp.experiment_id])) == len(runs)


def _series(curves: dict[str, list[tuple[float, float, float]]]):
    """Series from (accuracy, wall s, rollout tokens) per step for each run id."""
    import pandas as pd

    from treepo_lab.analysis.series import ACCURACY, DECODED, WALL, Series

    rows = [(rid, key, step, v, step) for rid, pts in curves.items() for step, (acc, wall, tok) in enumerate(pts)
            for key, v in ((ACCURACY, acc), (WALL, wall), (DECODED, tok))]
    data = type("Data", (), {"metrics": pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])})
    return Series(data)


def test_compute_matched_differences_and_time_ratio():
    # a learns as fast per second as b but spends half the tokens per step; both reach 0.6 at the end
    a = {f"a{i}": [(0.2, 0, 0), (0.4 + i / 100, 10, 50), (0.6, 20, 100)] for i in range(3)}
    b = {f"b{i}": [(0.2, 0, 0), (0.4 + i / 100, 20, 100), (0.6, 40, 200)] for i in range(3)}
    series = _series({**a, **b})
    budget, acc_a, acc_b = fnd.matched(series, list(a), list(b), "tokens")
    assert budget == 100 and acc_a.tolist() == [0.6] * 3 and acc_b == pytest.approx([0.4, 0.41, 0.42])
    ratio, level = fnd.time_ratio(series, list(a), list(b), n_boot=200)
    assert level == pytest.approx(0.6) and ratio.mean == pytest.approx(0.5)  # 20 s of a vs 40 s of b
    slow = {f"c{i}": [(0.2, 0, 0), (0.3, 40, 100)] for i in range(3)}
    never, _ = fnd.time_ratio(_series({**slow, **b}), list(slow), list(b), n_boot=200)
    assert never.mean == np.inf and fnd._ratio(never).startswith("never")
