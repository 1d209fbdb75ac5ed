"""Which MLflow runs a report is about: a sweep, an MLflow experiment, a filter string or run ids.

Everything goes through MLflow's client API (works the same on a SQLite file, a file store and a
tracking server). A sweep's parent run (the one holding the study) is returned separately: it is where
the report is logged, not a data point.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from treepo_lab.registry import ConfigError
from treepo_lab.tags import LEGACY_SWEEP_TAG, PARENT_RUN_TAG as PARENT_TAG, SEED_TAG, SWEEP_TAG, TRIAL_TAG
from treepo_lab.tags import SWEEP_ROLE_TAG as ROLE_TAG

SWEEP_TAGS = (SWEEP_TAG, LEGACY_SWEEP_TAG)  # runs of older sweeps carry both
PAGE = 1000


@dataclass
class Selected:
    name: str  # what the report is called (reports/<name>/)
    runs: list[Run]  # the data points (children of a sweep)
    parent: Run | None = None  # a sweep's parent run, when there is one
    kind: str = "runs"  # sweep | experiment | filter | runs
    notes: list[str] = field(default_factory=list)


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=PAGE, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]


def _experiment_names(client: MlflowClient) -> str:
    names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none (the store is empty)"


def split_parents(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(parents, children): a parent is a run another run points at, or a sweep run without a trial."""
    parent_ids = {r.data.tags.get(PARENT_TAG) for r in runs} - {None}
    parents, children = [], []
    for r in runs:
        tags = r.data.tags
        is_parent = r.info.run_id in parent_ids or tags.get(ROLE_TAG) == "parent" or (
            any(t in tags for t in SWEEP_TAGS) and TRIAL_TAG not in tags and SEED_TAG not in tags)
        (parents if is_parent else children).append(r)
    return parents, children


def select_runs(client: MlflowClient, *, sweep: str | None = None, experiment: str | None = None,
                filter_string: str | None = None, run_ids: list[str] | None = None) -> Selected:
    """Resolve exactly one of the selectors. Raises ConfigError naming what was not found."""
    given = [k for k, v in (("sweep", sweep), ("experiment", experiment), ("filter", filter_string),
                            ("runs", run_ids)) if v]
    if len(given) != 1:
        raise ConfigError("selection", given or None, "exactly one of --sweep NAME, --experiment NAME, "
                                                      "--filter STRING or --runs ID ...")
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except MlflowException as e:
                raise ConfigError("--runs", rid, f"an MLflow run id in {client.tracking_uri} ({e.error_code})") from e
        name = runs[0].info.run_name if len(runs) == 1 else f"runs-{len(runs)}-{runs[0].info.run_id[:8]}"
        return Selected(name, runs, None, "runs")  # named explicitly: every one is a data point
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            raise ConfigError("--experiment", experiment, f"an MLflow experiment; there are: {_experiment_names(client)}")
        parents, children = split_parents(_search(client, [exp.experiment_id]))
        sel = Selected(experiment, children, parents[0] if len(parents) == 1 else None, "experiment")
        if len(parents) > 1:
            sel.notes.append(f"{len(parents)} parent runs in this experiment; the report is not logged to any "
                             "(use --sweep NAME for one sweep)")
        return sel
    if sweep:
        return _select_sweep(client, sweep)
    try:
        runs = _search(client, _all_experiment_ids(client), filter_string)
    except MlflowException as e:
        raise ConfigError("--filter", filter_string, f"an MLflow search filter ({e.message.splitlines()[0]})") from e
    return Selected("filter", split_parents(runs)[1], None, "filter")


def _select_sweep(client: MlflowClient, sweep: str) -> Selected:
    """One MLflow experiment per sweep (issue 10); else the runs tagged with the sweep's name anywhere."""
    exp = client.get_experiment_by_name(sweep)
    runs: list[Run] = []
    if exp is not None and exp.lifecycle_stage == "active":
        runs = _search(client, [exp.experiment_id])
    if not runs:
        ids = _all_experiment_ids(client)
        for tag in SWEEP_TAGS:
            runs += _search(client, ids, f"tags.`{tag}` = '{sweep}'") if ids else []
        runs = list({r.info.run_id: r for r in runs}.values())
    if not runs:
        raise ConfigError("--sweep", sweep, f"a sweep name (its MLflow experiment, or the tag {SWEEP_TAG} of its runs); "
                                            f"experiments: {_experiment_names(client)}")
    parents, children = split_parents(runs)
    # the newest parent is the study this report belongs to (a rerun of the same sweep adds one)
    parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    parent = parents[0] if parents else None
    if parent is not None and len(parents) > 1:
        mine = [r for r in children if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        orphans = [r for r in children if r.data.tags.get(PARENT_TAG) is None]
        children = mine + orphans
    return Selected(sweep, children, parent, "sweep")
