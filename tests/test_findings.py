"""The comparison rules of the findings report on synthetic run curves (no training): statistics equal to
scipy's on fixed inputs, verdicts from the claim's type, tokens-to-target, preconditions, and the runs table
written and read back exactly."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from treepo_lab.analysis import endpoints as ep
from treepo_lab.analysis import findings as fnd
from treepo_lab.analysis import inference as inf
from treepo_lab.analysis import runs_table
from treepo_lab.registry import ConfigError

A = np.array([0.81, 0.78, 0.84, 0.80, 0.83, 0.79])
B = np.array([0.76, 0.77, 0.80, 0.74, 0.81, 0.78])


def test_paired_t_welch_and_permutation_equal_scipy():
    e = inf.paired(A, B)
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-12) and e.diff == pytest.approx((A - B).mean())
    assert e.df == 5 and e.paired
    # the exact sign-flip p: all 2^6 sign patterns enumerated by hand
    d = A - B
    flips = np.array(np.meshgrid(*[[-1, 1]] * 6)).reshape(6, -1).T
    exact = np.mean(np.abs((flips * d).mean(1)) >= abs(d.mean()) - 1e-12)
    assert e.p_perm == pytest.approx(exact)
    w = inf.welch(A, B[:5])
    ci = stats.ttest_ind(A, B[:5], equal_var=False).confidence_interval(0.95)
    assert (w.low, w.high) == pytest.approx((ci.low, ci.high), abs=1e-12) and not w.paired
    perm = stats.permutation_test((A, B[:5]), lambda x, y: x.mean() - y.mean(), permutation_type="independent",
                                  n_resamples=np.inf)
    assert w.p_perm == pytest.approx(perm.pvalue)
    # the one-sided p of the t statistic, as scipy's alternative="greater"
    assert inf.one_sided_p(e) == pytest.approx(stats.ttest_rel(A, B, alternative="greater").pvalue)
    shifted = stats.ttest_rel(A + 0.02, B, alternative="greater").pvalue  # H0: diff <= -0.02
    assert inf.one_sided_p(e, -0.02) == pytest.approx(shifted)


def test_holm_and_power():
    assert inf.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert inf.holm([0.5, float("nan")])[0] == 0.5 and math.isnan(inf.holm([0.5, float("nan")])[1])
    e = inf.paired(A, B)
    # MDE = (t_.975 + t_.8) * SE on n-1 df; at the seeds it returns, the observed effect is detectable
    assert inf.mde(e.se, e.df) == pytest.approx((stats.t.ppf(0.975, 5) + stats.t.ppf(0.8, 5)) * e.se)
    n = inf.seeds_for(0.01, e)
    assert inf.mde(e.se * math.sqrt(6 / n), n - 1) <= 0.01 < inf.mde(e.se * math.sqrt(6 / (n - 1)), n - 2)


def curves_table(arms: dict[str, dict], seeds=range(5), steps=40, every=4, noise=0.01, knobs=None) -> pd.DataFrame:
    """Sigmoid accuracy curves per step (start 0.3, plateau 0.9), `gain` added on the plateau part,
    `tokens` per step; each seed its own small noise, shared by the arms (a paired design)."""
    rows = []
    for name, arm in arms.items():
        for seed in seeds:
            rng = np.random.default_rng(seed)
            for step in range(0, steps + 1, every):
                base = 0.3 + 0.6 / (1 + math.exp(-(step - 14) / 3)) - 0.6 / (1 + math.exp(14 / 3))
                acc = base + arm.get("gain", 0.0) * base / 0.9 + noise * rng.standard_normal() + \
                    arm.get("seed_gain", 0.0) * np.random.default_rng(1000 + seed).standard_normal()
                rows.append({"run_id": f"{name}-{seed}", "experiment": name, "seed": seed, "step": step,
                             "accuracy": acc if step else 0.3, "tokens": float(arm["tokens"] * step),
                             "cpu_s": float(step * arm.get("cpu", 1.0)), "wall_s": float(step),
                             **{runs_table.KNOB + k: v for k, v in {**(knobs or {}), **arm.get("knobs", {})}.items()},
                             **({runs_table.FIRES + m: float(v * step) for m, v in arm["fires"].items()}
                                if "fires" in arm else {})})
    return pd.DataFrame(rows)


def finding(**kw) -> fnd.Finding:
    base = dict(id="f", claim="c", experiment="exp", reference="ref", relation=">=", margin=0.02,
                knobs=("sampler.kind",))
    return fnd.Finding(**{**base, **kw})


SAMPLER = {"exp": {"knobs": {"sampler.kind": "tree"}}, "ref": {"knobs": {"sampler.kind": "sequential"}}}


def arms(exp: dict, ref: dict) -> dict:
    return {"exp": {**SAMPLER["exp"], **exp}, "ref": {**SAMPLER["ref"], **ref}}


def test_same_accuracy_fewer_tokens_is_non_inferior_not_superior():
    table = curves_table(arms({"tokens": 670.0}, {"tokens": 1000.0}), noise=0.01)
    (r,) = fnd.evaluate([finding()], table)
    assert r.verdict == "non-inferior", r
    assert abs(r.endpoints.last_quarter.diff) < 1e-9
    for t in r.endpoints.targets:  # equal accuracy per step at 0.67x tokens per step
        assert t.ratio.diff == pytest.approx(0.67, abs=0.02) and t.reached == (5, 5, 5)
    assert r.endpoints.tokens_per_step.diff == pytest.approx(0.67)
    assert r.compute_verdict == "superior"
    # the same arms under a superiority claim: not superior
    (s,) = fnd.evaluate([finding(relation=">", margin=None)], table)
    assert s.verdict == "cannot separate"


def test_a_true_gain_is_superior_and_a_loss_inferior():
    table = curves_table(arms({"tokens": 1000.0, "gain": 0.05, "seed_gain": 0.01}, {"tokens": 1000.0}), noise=0.01)
    (r,) = fnd.evaluate([finding(relation=">", margin=None)], table)
    assert r.verdict == "superior" and r.endpoints.last_quarter.diff == pytest.approx(0.05, abs=0.02)
    assert r.endpoints.paired and r.endpoints.pairs == 5
    (ni,) = fnd.evaluate([finding()], table)
    assert ni.verdict == "superior"  # a >= claim whose superiority also holds
    worse = curves_table(arms({"tokens": 1000.0, "gain": -0.06, "seed_gain": 0.01}, {"tokens": 1000.0}))
    assert fnd.evaluate([finding()], worse)[0].verdict == "inferior"


def test_holm_across_findings_can_withhold_a_verdict():
    table = curves_table(arms({"tokens": 1000.0, "gain": 0.012, "seed_gain": 0.01}, {"tokens": 1000.0}),
                         seeds=range(6))
    one = fnd.evaluate([finding(relation=">", margin=None)], table)[0]
    many = fnd.evaluate([finding(id=f"f{i}", relation=">", margin=None) for i in range(8)], table)[0]
    assert many.p_holm == pytest.approx(min(1.0, 8 * one.p))
    assert many.p_holm >= one.p_holm


def test_preconditions_before_any_verdict():
    never = curves_table(arms({"tokens": 1000.0, "fires": {"tree/fallback_count": 0}},
                              {"tokens": 1000.0, "fires": {"tree/fallback_count": 0}}))
    (r,) = fnd.evaluate([finding(fires="tree/fallback_count")], never)
    assert r.verdict == "not tested" and "never fired" in r.reason
    fired = curves_table(arms({"tokens": 1000.0, "fires": {"tree/fallback_count": 1}},
                              {"tokens": 1000.0, "fires": {"tree/fallback_count": 0}}))
    (r,) = fnd.evaluate([finding(fires="tree/fallback_count")], fired)
    assert r.verdict != "not tested" and "100% of steps" in r.fired
    same = curves_table({"exp": {"tokens": 1000.0, "knobs": {"x": "1"}}, "ref": {"tokens": 1000.0, "knobs": {"x": "1"}}},
                        knobs={"sampler.kind": "tree"})
    same[runs_table.KNOB + "y"] = same["experiment"].map({"exp": "1", "ref": "1"})
    assert "identical configs" in fnd.evaluate([finding()], same)[0].reason
    confounded = curves_table(arms({"tokens": 1000.0, "knobs": {"sampler.kind": "tree", "loss.name": "a"}},
                                   {"tokens": 1000.0, "knobs": {"sampler.kind": "sequential", "loss.name": "b"}}))
    (r,) = fnd.evaluate([finding()], confounded)
    assert r.verdict == "not tested" and r.reason == "confounded: the arms also differ in loss.name"
    assert "no finished runs of exp" in fnd.evaluate([finding()], confounded[confounded.experiment == "ref"])[0].reason


def test_warm_starts_pair_and_stratify():
    tables = []
    for ws in ("0", "1"):
        t = curves_table(arms({"tokens": 700.0, "gain": 0.0}, {"tokens": 1000.0}), seeds=range(3),
                         knobs={ep.PAIR_KNOB: ws})
        t["run_id"] += f"-w{ws}"
        tables.append(t)
    (r,) = fnd.evaluate([finding()], pd.concat(tables))
    assert r.endpoints.paired and r.endpoints.pairs == 6 and set(r.strata) == {"0", "1"}
    assert all(e.pairs == 3 for e in r.strata.values())


def test_runs_csv_round_trip_reproduces_the_table(tmp_path):
    table = curves_table(arms({"tokens": 670.0, "gain": 0.01, "seed_gain": 0.01}, {"tokens": 1000.0}))
    table[runs_table.KNOB + "sampler.params"] = "null"
    runs_table.write(table, tmp_path / "runs.csv")
    back = runs_table.read(tmp_path / "runs.csv")
    assert back[runs_table.KNOB + "sampler.params"].eq("null").all()
    rows = lambda t: fnd.findings_table(fnd.evaluate([finding(knobs=("sampler.kind", "sampler.params"))], t))
    assert rows(back) == rows(table)


@pytest.mark.parametrize("text, key", [
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: '>=', knobs: [k]}]",
     r"findings\[0\].margin=None"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: '>=', margin: 0, knobs: [k]}]",
     r"findings\[0\].margin=0 "),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: '>=', margin: -0.02, knobs: [k]}]",
     r"findings\[0\].margin=-0.02"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: '>', knobs: [k], fires: tree/nope}]",
     r"findings\[0\].fires='tree/nope'"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: up, knobs: [k]}]",
     r"findings\[0\].relation"),
    ("findings: [{id: a, claim: c, experiment: grpo, reference: grpo, relation: '>'}]", r"findings\[0\].knobs"),
    ("findings: [{id: a, claim: c, experiment: nope, reference: grpo, relation: '>', knobs: [k]}]",
     r"findings\[0\].experiment"),
    ("findings: [{id: a, claim: c", "findings"),
])
def test_bad_findings_are_one_line(tmp_path, text, key):
    from treepo_lab.config import list_experiments

    (tmp_path / "f.yaml").write_text(text)
    with pytest.raises(ConfigError, match=key) as err:
        fnd.load_findings(tmp_path / "f.yaml", list_experiments())
    assert "\n" not in str(err.value)


def test_a_csv_without_a_required_column_is_refused(tmp_path):
    (tmp_path / "runs.csv").write_text("run_id,experiment,seed,step,accuracy,tokens,wall_s\nr,e,0,0,0.5,0,0\n")
    with pytest.raises(ConfigError, match="missing: cpu_s"):
        runs_table.read(tmp_path / "runs.csv")


def test_where_selects_runs_by_a_kept_column_only():
    table = curves_table(arms({"tokens": 1000.0}, {"tokens": 1000.0}), knobs={"task.name": "chain"})
    sel = lambda v: fnd.evaluate([finding(where=(("task.name", v),))], table)[0]
    assert sel("chain").verdict == "non-inferior" and sel("chain_mid").reason == "no finished runs of exp, ref"
    without = table.drop(columns=[runs_table.KNOB + "task.name"])  # a table that cannot tell the tasks apart
    assert fnd.evaluate([finding(where=(("task.name", "chain"),))], without)[0].verdict == "not tested"
