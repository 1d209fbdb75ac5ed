"""The paper's findings (analysis/findings.yaml) tested on the runs table: two endpoints per claim, paired
statistics, a verdict from the claim's type, preconditions checked before any verdict.

A finding says `experiment <relation> reference`: `>` is a superiority claim, `>=` a non-inferiority claim
with a declared `margin` (accuracy, e.g. 0.02 = 2 pp). The verdict reads the per-update endpoint (accuracy
difference over the last quarter of the steps, analysis/endpoints.py) with the claim's one-sided test at
2.5% (the bounds of the two-sided 95% interval), Holm-adjusted across the findings of one report:
    superior      the difference is > 0 (for `>=` claims too, tested after non-inferiority holds)
    non-inferior  (`>=` only) the difference is > -margin
    inferior      the 95% interval lies below 0 (`>`) or below -margin (`>=`): the claim is refuted
    cannot separate  none of these
    not tested    a precondition failed: no finished runs, the intervention never fired (`fires:`),
                  identical configs, arms that differ in knobs the finding does not name, mixed run sets
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from treepo_lab.analysis import endpoints as ep
from treepo_lab.analysis import inference as inf
from treepo_lab.analysis.runs_table import FIRES, KNOB
from treepo_lab.registry import ConfigError

RELATIONS = (">", ">=")
VERDICTS = ("superior", "non-inferior", "inferior", "cannot separate", "not tested")
FIELDS = ("id", "claim", "experiment", "reference", "relation", "margin", "knobs", "fires", "where")
REQUIRED = ("id", "claim", "experiment", "reference", "relation", "knobs")
# per-step counters that show an intervention happened (rollout/accounting.py names them)
FIRE_METRICS = ("tree/fallback_count", "train/prompt_fallback_ratio", "rollout/pruned", "rollout/dropped_short",
                "train/skipped")
ALPHA_ONE_SIDED = 0.025


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    experiment: str
    reference: str
    relation: str  # > superiority | >= non-inferiority
    knobs: tuple[str, ...]  # the config keys the claim is about: the arms may differ in these only
    margin: float | None = None  # >=: the loss of accuracy still called non-inferior (0.02 = 2 pp)
    fires: str | None = None  # a per-step metric that must be > 0 in the experiment's runs
    where: tuple[tuple[str, str], ...] = ()  # knob = value: the runs both arms are taken from

    @property
    def threshold(self) -> float:
        return -self.margin if self.relation == ">=" else 0.0


def _check(i: int, item, known: list[str] | None) -> Finding:
    where = f"findings[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(where, item, f"a mapping with keys {', '.join(REQUIRED)} (and optionally margin, fires, where)")
    extra = sorted(set(item) - set(FIELDS))
    if extra:
        raise ConfigError(f"{where}.{extra[0]}", item[extra[0]], f"one of the keys {', '.join(FIELDS)}")
    for key in ("id", "claim", "experiment", "reference"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ConfigError(f"{where}.{key}", item.get(key), "a non-empty string")
    for key in ("experiment", "reference"):
        if known is not None and item[key] not in known:
            raise ConfigError(f"{where}.{key}", item[key], f"a registry experiment: {', '.join(known)}")
    rel = item.get("relation")
    if rel not in RELATIONS:
        raise ConfigError(f"{where}.relation", rel, "'>' (superiority) or '>=' (non-inferiority, with a margin); "
                          "quote it in YAML")
    margin = item.get("margin")
    if rel == ">=" and margin is None:
        raise ConfigError(f"{where}.margin", None, "a margin > 0 for a '>=' claim (the accuracy loss still called "
                          "non-inferior, e.g. 0.02 = 2 pp)")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0
                               or margin >= 1):
        raise ConfigError(f"{where}.margin", margin, "a number in (0, 1): an accuracy difference, e.g. 0.02 = 2 pp")
    if rel == ">" and margin is not None:
        raise ConfigError(f"{where}.margin", margin, "no margin for a '>' claim (superiority has none); use '>='")
    knobs = item.get("knobs")
    if not isinstance(knobs, list) or not knobs or not all(isinstance(k, str) and k for k in knobs):
        raise ConfigError(f"{where}.knobs", knobs, "a non-empty list of the config keys the arms differ in "
                          "(e.g. [advantage.estimator])")
    fires = item.get("fires")
    if fires is not None and fires not in FIRE_METRICS:
        raise ConfigError(f"{where}.fires", fires, f"a per-step metric: {', '.join(FIRE_METRICS)}")
    sel = item.get("where") or {}
    if not isinstance(sel, dict) or not all(v is None or isinstance(v, (str, int, float, bool)) for v in sel.values()):
        raise ConfigError(f"{where}.where", sel, "a mapping {config key: value} selecting the runs of both arms")
    return Finding(item["id"], item["claim"], item["experiment"], item["reference"], rel, tuple(knobs),
                   None if margin is None else float(margin), fires,
                   tuple((str(k), spelling(v)) for k, v in sel.items()))


def spelling(v) -> str:
    """A value as the runs' params spell it (YAML: true, 0.5, null)."""
    return v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def load_findings(path: str | Path, known_experiments: list[str] | None = None) -> list[Finding]:
    """Parse and check the findings file (one-line errors naming the field, before anything runs)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("findings", str(path), "an existing YAML file (e.g. analysis/findings.yaml)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        raise ConfigError("findings", str(path), "valid YAML" + (f" (error on line {line + 1})" if line is not None
                                                                 else "")) from None
    items = raw.get("findings") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError("findings", str(path), "a YAML file with a non-empty list under `findings:`")
    out = [_check(i, item, known_experiments) for i, item in enumerate(items)]
    ids = [f.id for f in out]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise ConfigError(f"findings[{ids.index(dup, ids.index(dup) + 1)}].id", dup, "an id not used by another finding")
    return out


def experiments_of(findings: list[Finding]) -> list[str]:
    """Every experiment the findings need, in first-mention order."""
    return list(dict.fromkeys(e for f in findings for e in (f.experiment, f.reference)))


def fire_metrics(findings: list[Finding]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.fires for f in findings if f.fires))


def selected_keys(findings: list[Finding]) -> tuple[str, ...]:
    """The config keys the findings select runs by (`where:`): the runs table keeps their columns."""
    return tuple(dict.fromkeys(k for f in findings for k, _ in f.where))


# ---- one finding ---------------------------------------------------------------------------------------
@dataclass
class FindingResult:
    finding: Finding
    runs: tuple[int, int]  # finished runs of experiment, reference
    endpoints: ep.Endpoints | None
    p: float = float("nan")  # one-sided p of the claim's test, unadjusted
    p_holm: float = float("nan")
    verdict: str = "not tested"
    compute_verdict: str = "not tested"  # on the tokens-to-80%-of-gain ratio: superior = fewer tokens
    reason: str = ""  # why not tested
    notes: list[str] = field(default_factory=list)
    strata: dict[str, ep.Endpoints] = field(default_factory=dict)  # per warm start, when there are several
    fired: str = ""  # how often the intervention fired


def _rows(table: pd.DataFrame, f: Finding, experiment: str) -> pd.DataFrame:
    rows = table[table["experiment"] == experiment]
    for key, value in f.where:
        col = KNOB + key
        if col not in rows.columns:  # a table written without it (runs_table.build keeps where-keys): nothing
            return rows.iloc[:0]
        rows = rows[rows[col].astype(str) == value]
    return rows


def preconditions(f: Finding, exp: pd.DataFrame, ref: pd.DataFrame) -> tuple[str, str]:
    """(why the finding cannot be tested, or ""; how often its intervention fired)."""
    missing = [e for e, rows in ((f.experiment, exp), (f.reference, ref)) if rows.empty]
    if missing:
        return f"no finished runs of {', '.join(missing)}", ""
    ka, kb = ep.arm_knobs(exp), ep.arm_knobs(ref)
    for name, k in ((f.experiment, ka), (f.reference, kb)):
        mixed = sorted(key for key, vals in k.items() if len(vals) > 1)
        if mixed:
            return f"the runs of {name} differ in {mixed[0]} ({', '.join(sorted(k[mixed[0]]))}): select with where:", ""
    diff = ep.differing(ka, kb)
    if not diff:
        return f"{f.experiment} and {f.reference} have identical configs (the same run set)", ""
    extra = [k for k in diff if k not in f.knobs]
    if extra:
        return f"confounded: the arms also differ in {', '.join(extra)}", ""
    steps = {int(g["step"].max()) for _, g in pd.concat([exp, ref]).groupby("run_id")}
    if len(steps) > 1:
        return f"the runs end at different steps ({', '.join(map(str, sorted(steps)))})", ""
    if f.fires:
        col = FIRES + f.fires
        last = exp.groupby("run_id")[col].last() if col in exp.columns else pd.Series(dtype=float)
        if last.empty or last.isna().all():
            return f"{f.fires} was not logged by the runs of {f.experiment}", ""
        steps_run = exp.groupby("run_id")["step"].max()
        share = float((last / steps_run).mean())
        fired = f"{f.fires} > 0 in {100 * share:.0f}% of steps"
        if (last.fillna(0) == 0).any():
            return (f"the intervention never fired: {f.fires} = 0 in every step of {int((last.fillna(0) == 0).sum())}"
                    f"/{len(last)} runs of {f.experiment}"), fired
        return "", fired
    return "", ""


def evaluate(findings: list[Finding], table: pd.DataFrame) -> list[FindingResult]:
    out = []
    for f in findings:
        exp, ref = _rows(table, f, f.experiment), _rows(table, f, f.reference)
        n = (exp["run_id"].nunique(), ref["run_id"].nunique())
        reason, fired = preconditions(f, exp, ref)
        if reason:
            out.append(FindingResult(f, n, None, reason=reason, fired=fired))
            continue
        ca, cb = ep.curves(exp), ep.curves(ref)
        e = ep.compare(ca, cb)
        strata = sorted({c.stratum for c in ca} & {c.stratum for c in cb})
        per = {s: ep.compare(ep.stratum_of(ca, s), ep.stratum_of(cb, s)) for s in strata} if len(strata) > 1 else {}
        r = FindingResult(f, n, e, p=inf.one_sided_p(e.last_quarter, f.threshold), notes=list(e.notes), strata=per,
                          fired=fired)
        if not e.last_quarter.defined:
            r.reason = "fewer than two runs per arm: no interval"
        out.append(r)
    _verdicts(out)
    return out


def _verdicts(results: list[FindingResult]) -> None:
    """Holm across the tested findings of this report, then each verdict from its adjusted p and interval."""
    tested = [r for r in results if r.endpoints is not None and not r.reason]
    adjusted = inf.holm([r.p for r in tested])
    # superiority of a >= claim, tested once non-inferiority holds (fixed sequence), in the same Holm family
    sup = inf.holm([inf.one_sided_p(r.endpoints.last_quarter, 0.0) for r in tested])
    for r, p_adj, p_sup in zip(tested, adjusted, sup):
        f, e = r.finding, r.endpoints.last_quarter
        r.p_holm = p_adj
        if p_adj < ALPHA_ONE_SIDED:
            r.verdict = "superior" if f.relation == ">" or p_sup < ALPHA_ONE_SIDED else "non-inferior"
        elif e.high < f.threshold:
            r.verdict = "inferior"
        else:
            r.verdict = "cannot separate"
        t = r.endpoints.targets[TARGET_80]
        r.compute_verdict = ("not tested" if not t.ratio.defined else "superior" if t.ratio.high < 1 else
                             "inferior" if t.ratio.low > 1 else "cannot separate")


TARGET_80 = ep.TARGETS.index(0.8)


# ---- tables --------------------------------------------------------------------------------------------
def pp(e: inf.Estimate) -> str:
    """A difference of accuracies in percentage points with its 95% interval."""
    if not math.isfinite(e.diff):
        return "n/a"
    if not e.defined:
        return f"{100 * e.diff:+.1f}"
    return f"{100 * e.diff:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def ratio(e: inf.Estimate) -> str:
    if not math.isfinite(e.diff):
        return "n/a"
    return f"{e.diff:.2f}" if not e.defined else f"{e.diff:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _p(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}" if v >= 0.001 else "<0.001"


def claim_text(f: Finding) -> str:
    rel = "experiment > reference" if f.relation == ">" else f"experiment >= reference - {100 * f.margin:g} pp"
    return f"{f.claim} ({rel})"


FINDINGS_COLUMNS = ["finding", "paper's claim", "experiment vs reference", "runs (pairs)",
                    "Δ acc. per update, last quarter (pp) [95% CI]", "Δ acc. at the final step (pp) [95% CI]",
                    "p: sign-flip (Δ=0) / the claim's test, Holm", "tokens to 50% of ref. gain, exp./ref. [95% CI] (reached)",
                    "tokens to 80%", "tokens to 90%", "tokens per step, exp./ref.", "verdict per update",
                    "per compute (80%)", "preconditions"]


def _target(t: ep.Target) -> str:
    return f"{ratio(t.ratio)} ({t.reached[0]}/{t.reached[2]}, {t.reached[1]}/{t.reached[2]})"


def findings_table(results: list[FindingResult]) -> list[list[str]]:
    rows = []
    for r in results:
        f, e = r.finding, r.endpoints
        pre = "; ".join(x for x in (r.reason, r.fired, *r.notes) if x) or "ok"
        if e is None:
            rows.append([f.id, claim_text(f), f"{f.experiment} vs {f.reference}", f"{r.runs[0]}/{r.runs[1]}",
                         *["n/a"] * 7, "not tested", "not tested", pre])
            continue
        pairs = f"{r.runs[0]}/{r.runs[1]} ({e.pairs} paired)" if e.paired else f"{r.runs[0]}/{r.runs[1]} (unpaired)"
        rows.append([f.id, claim_text(f), f"{f.experiment} vs {f.reference}", pairs, pp(e.last_quarter), pp(e.final),
                     f"{_p(e.last_quarter.p_perm)} / {_p(r.p_holm)}", *(_target(t) for t in e.targets),
                     ratio(e.tokens_per_step), r.verdict, r.compute_verdict, pre])
    return rows


def secondary_rows(results: list[FindingResult]) -> list[list[str]]:
    rows = []
    for r in results:
        e = r.endpoints
        if e is None:
            continue
        rows.append([r.finding.id, *(f"{pp(d)} at {b:,.0f}" for b, d in e.budgets), pp(e.auc), ratio(e.cpu_per_step),
                     f"{100 * e.start:.1f}"])
    return rows


def strata_rows(results: list[FindingResult]) -> list[list[str]]:
    rows = []
    for r in results:
        for s, e in r.strata.items():
            rows.append([r.finding.id, f"{ep.PAIR_KNOB}={s}", str(e.pairs), pp(e.last_quarter), pp(e.final),
                         _target(e.targets[TARGET_80]), ratio(e.tokens_per_step)])
    return rows


def power_rows(results: list[FindingResult]) -> list[list[str]]:
    rows = []
    for r in results:
        e = r.endpoints.last_quarter if r.endpoints else inf.UNDEFINED
        if not e.defined:
            rows.append([r.finding.id, pp(e), "n/a", "n/a", "n/a"])
            continue
        mde = inf.mde(e.se, e.df)
        need = inf.seeds_for(e.diff, e)
        need_s = "no effect observed" if need == math.inf and e.diff == 0 else ">1000" if need == math.inf else f"{need:.0f}"
        rows.append([r.finding.id, pp(e), str(e.n), f"{100 * mde:.1f}", need_s])
    return rows
