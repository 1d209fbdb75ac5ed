"""The paper's findings reproduced or refuted (`treepo-lab paper`, treepo_lab/commands/paper.py).

`treepo-lab paper` runs the sweep sweeps/paper.yaml restricted to the experiments the findings need (analysis/findings.yaml)
with the requested seeds, through the sweep runner, which resumes a killed sweep without rerunning a finished
trial (the study and the MLflow runs are the record; a second call with everything finished only reports).
Then it writes the report: the findings table first (claim, compute-matched difference with its 95% interval,
verdict), the power note (seeds needed), the compute-matched figure, and the full comparison report of the
sweep beside it (comparison/).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from treepo_lab.analysis import endpoints, plots_curves, runs_table
from treepo_lab.analysis import findings as fnd
from treepo_lab.analysis.groups import Grouping, group_runs
from treepo_lab.analysis.page import Section, markdown, page
from treepo_lab.analysis.report import build_report
from treepo_lab.analysis.series import Series
from treepo_lab.analysis.style import StrategyStyles
from treepo_lab.analysis.tables import Table
from treepo_lab.config import list_experiments
from treepo_lab.registry import ConfigError
from treepo_lab.sweep.grammar import parse_values
from treepo_lab.sweep.spec import read_spec_file
from treepo_lab.tags import EXPERIMENT_TAG

ROOT = Path(__file__).resolve().parents[2]  # the source tree (sweeps/, analysis/)


def select(a: argparse.Namespace) -> list[fnd.Finding]:
    """The findings to test; every check before anything is created."""
    found = fnd.load_findings(a.findings, list_experiments())
    if a.only:
        ids = [f.id for f in found]
        bad = [i for i in a.only if i not in ids]
        if bad:
            raise ConfigError("--only", bad[0], f"a finding id of {a.findings}: {', '.join(ids)}")
        found = [f for f in found if f.id in a.only]
    if a.seeds is not None and a.seeds < 2:
        raise ConfigError("--seeds", a.seeds, "an integer >= 2 (one seed gives no interval)")
    if a.workers < 1:
        raise ConfigError("--workers", a.workers, "an integer >= 1")
    if a.from_csv and not a.report_only:
        raise ConfigError("--from-csv", a.from_csv, "only with --report-only (a CSV cannot run experiments)")
    return found


def sweep_args(a: argparse.Namespace, found: list[fnd.Finding]) -> list[str]:
    """The spec narrowed to the findings' experiments (and --seeds), as sweep.<field> overrides."""
    need = fnd.experiments_of(found)
    raw = read_spec_file(a.spec)
    if "blocks" in raw:
        blocks = [b for b in restrict_blocks(raw["blocks"], need, raw.get("experiment")) if _needed(b, found)]
        if a.seeds is not None:
            blocks = [{**b, "seeds": list(range(a.seeds))} for b in blocks]
        args = [f"sweep.blocks={json.dumps(blocks)}"]
    else:
        args = [f"sweep.grid={{experiment: 'choice({', '.join(need)})'}}"]
        if a.seeds is not None:
            args.append(f"sweep.seeds={list(range(a.seeds))}")
    return args + list(a.overrides)


def restrict_blocks(raw_blocks: list[dict], experiments: list[str], base: str | None = None) -> list[dict]:
    """The spec's `blocks:` (as written) narrowed to `experiments` (`treepo-lab paper --only`): each block keeps
    only those values of its `experiment` key; a key conditioned (when:) on experiment keeps the kept values and
    is dropped when none is left (with any key conditioned on it); a block left without an experiment is dropped.
    A block with no experiment key runs the spec's base experiment: kept when `base` is None or listed."""
    out = []
    for block in copy.deepcopy(list(raw_blocks)):
        grid = block.get("grid") or {}
        if "experiment" not in grid:
            if base is None or base in experiments:
                out.append(block)
            continue
        kept, dropped = {}, set()
        for key, entry in grid.items():
            when = dict(entry.get("when") or {}) if isinstance(entry, dict) else {}
            if key == "experiment":
                values = parse_values(key, entry["values"] if isinstance(entry, dict) else entry).values
                left = [v for v in values if v in experiments]
                if not left:
                    break
                kept[key] = {**entry, "values": left} if isinstance(entry, dict) else left
            elif set(when) & dropped:  # conditioned on a key no trial of this block has any more
                dropped.add(key)
            elif "experiment" in when:
                cond = when["experiment"] if isinstance(when["experiment"], list) else [when["experiment"]]
                when["experiment"] = [v for v in cond if v in experiments]
                if when["experiment"]:
                    kept[key] = {**entry, "when": when}
                else:
                    dropped.add(key)
            else:
                kept[key] = entry
        else:
            out.append({**block, "grid": kept})
    return out


def portable(override: str) -> str:
    """key=value with an absolute path shortened to its last part: a report names no machine's folders."""
    key, _, value = override.partition("=")
    return f"{key}=.../{Path(value).name}" if value.startswith(("/", "~")) else override


def _values(grid: dict, key: str) -> list[str] | None:
    """The values a block's grid gives `key`, spelled as run params are (None: the block does not vary it)."""
    if key not in grid:
        return None
    entry = grid[key]["values"] if isinstance(grid[key], dict) else grid[key]
    return [fnd.spelling(v) for v in parse_values(key, entry).values]


def _needed(block: dict, found: list[fnd.Finding]) -> bool:
    """Some finding compares an experiment of the block on runs its `where:` can select from it."""
    exps = _values(block["grid"], "experiment") or []
    return any((f.experiment in exps or f.reference in exps)
               and all(_values(block["grid"], k) is None or v in _values(block["grid"], k) for k, v in f.where)
               for f in found)


def _subset(grouping: Grouping, labels: list[str]) -> Grouping:
    return Grouping(grouping.keys, [g for g in grouping.groups if g.label in labels], grouping.left_out)


RULES = ("Per update: accuracy difference at equal optimizer steps, the mean over the evaluations of the last "
         "quarter of the steps (the verdict's endpoint) and at the final step; runs sharing (warm-start seed, seed) "
         "are paired (paired t interval, exact sign-flip p), others compared with Welch's t. Per compute: rollout "
         "tokens (decoded + prefill) to reach 50/80/90% of the reference's gain over the shared starting accuracy, "
         "per seed, experiment / reference (geometric mean ratio, t interval on log ratios; (k/n, k/n): runs of "
         "experiment and reference that reached it), and tokens per step. Verdicts: `>` claims are tested for "
         "superiority, `>=` claims for non-inferiority within their margin, one-sided at 2.5% (the bounds of the "
         "95% interval), Holm-adjusted across this report's findings: superior, non-inferior, inferior (the "
         "interval lies below 0, or below -margin), cannot separate, or not tested (a precondition failed). Per "
         "compute: superior = the 80% ratio's interval lies below 1.")


def write_report(name: str, found: list[fnd.Finding], table, out: Path, source: str, notes: list[str],
                 data=None) -> Path:
    """Every number from the runs table (written beside the report as runs.csv); `data` (the MLflow runs)
    only adds the full comparison report of every experiment."""
    out.mkdir(parents=True, exist_ok=True)
    runs_table.write(table, out / "runs.csv")
    results = fnd.evaluate(found, table)
    overlap = endpoints.overlapping_pairs(table)
    head = Section("What this tests", [
        f"{table['run_id'].nunique()} finished runs of {source}, grouped by registry experiment; every number "
        "below is re-derived from `runs.csv` by `treepo-lab paper --report-only --from-csv runs.csv`.", *notes])
    if overlap:
        head.notes.append(f"{overlap} pairs of runs of different experiments trained at the same time on one host: "
                          "their wall times share the machine's load, so every cost here is in rollout tokens or "
                          "process CPU seconds (time/cpu_s), never wall time.")
    sections = [
        Section("Findings", [RULES], tables=[Table(fnd.FINDINGS_COLUMNS, fnd.findings_table(results))]), head,
        Section("Secondary endpoints", ["Not verdicts: the accuracy difference at three token budgets declared "
                                        "in advance (1/3, 2/3 and all of the range every run of both arms "
                                        "covered), the difference of the normalised areas under accuracy vs "
                                        "tokens over that range, and CPU seconds per step."],
                tables=[Table(["finding", "Δ at 1/3 (pp)", "Δ at 2/3 (pp)", "Δ at 1x (pp)", "Δ area (pp)",
                               "CPU s per step, exp./ref.", "start acc. %"], fnd.secondary_rows(results))]),
        Section("Power", ["The minimum detectable effect (two-sided 5%, 80% power) of the per-update endpoint "
                          "for the seeds run, from its standard error, and the seeds per arm at which the observed "
                          "difference would be detectable if the spread stayed as observed."],
                tables=[Table(["finding", "Δ last quarter (pp)", "pairs", "MDE at 80% power (pp)",
                               "seeds for the observed Δ"], fnd.power_rows(results))])]
    strata = fnd.strata_rows(results)
    if strata:
        sections.insert(1, Section("Per warm start", ["The pooled findings above, by warm-start seed."], tables=[
            Table(["finding", "warm start", "pairs", "Δ last quarter (pp)", "Δ final (pp)", "tokens to 80%",
                   "tokens per step"], strata)]))
    curves_data = runs_table.to_runset(table, name, source)
    grouping = group_runs(curves_data, [EXPERIMENT_TAG])
    key = [e for e in ("grpo", "grpo_tree_sampling", "treepo_fixed_init") if grouping.by_label(e)]
    if key:
        fig_notes: list[str] = []
        sub = _subset(grouping, key)
        figs = plots_curves.compute_matched(Series(curves_data), sub, StrategyStyles(), out / "figures", fig_notes)
        figs += plots_curves.accuracy_vs_step(Series(curves_data), sub, StrategyStyles(), out / "figures", fig_notes)
        sections.append(Section("TreePO, GRPO with tree sampling and GRPO", notes=fig_notes, figures=[
            (figs[0], "accuracy vs rollout tokens and CPU time (mean over seeds, 95% band)"),
            (figs[2], "accuracy vs optimizer step (mean over seeds, 95% band)")]))
    if data is not None:
        try:
            build_report(data=data, out_dir=out / "comparison", log_to_parent=False, cache_dir=False)
            sections.append(Section("Every experiment", ["The full comparison report of the sweep (every group, "
                                                         "curves, Pareto front, tree shapes): `comparison/report.html`."]))
        except Exception as err:  # the findings stand without the comparison pages
            sections.append(Section("Every experiment", notes=[f"comparison report not built: {type(err).__name__}: {err}"]))
    title = f"Paper findings: {name}"
    (out / "report.md").write_text(markdown(title, sections, out))
    (out / "report.html").write_text(page(title, sections))
    return out / "report.md"
