"""The comparison report from REAL short training runs in a temporary MLflow store: 2 strategies x 2
seeds, a 2-trial Optuna sweep with a parent run, and an experiment with a failed run, a run still in
progress and missing metrics. The runs are trained once per test session (~1 s each on the tiny model).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image
from pypdf import PdfReader
from test_trainer import FAST

from treepo_lab.analysis import recipes
from treepo_lab.analysis import export, load
from treepo_lab.analysis.groups import group_runs
from treepo_lab.analysis.report import build_report
from treepo_lab.cli import main
from treepo_lab.analysis.style import DPI, DOUBLE_COLUMN_IN, SINGLE_COLUMN_IN
from treepo_lab.config import load_config
from treepo_lab.registry import ConfigError
from treepo_lab.train.run import run_experiment
from treepo_lab.train.trainer import Trainer

SHORT = [o for o in FAST if not o.startswith(("tracking.", "trainer.eval_every", "eval.n_problems"))] + [
    "trainer.steps=3", "trainer.eval_every=1", "eval.n_problems=16", "tracking.system_metrics=false",
    "tracking.log_trees_every=1"]
WIDTHS_PX = {round(SINGLE_COLUMN_IN * DPI), round(DOUBLE_COLUMN_IN * DPI)}


def _train(uri, ws, exp, mlflow_exp, seed, *extra, **kw):
    cfg = load_config(exp, SHORT + [f"warmstart.cache_dir={ws}", f"tracking.tracking_uri={uri}",
                                    f"tracking.experiment_name={mlflow_exp}", f"seed={seed}", *extra])
    trainer, _ = run_experiment(cfg, progress=False, **kw)
    return trainer.tracker.run_id


@pytest.fixture(scope="session")
def store(tmp_path_factory, ws_cache):
    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # checkpoints land in the temporary folder
    ids = {"cmp": [_train(uri, ws_cache, e, "cmp", s) for e in ("grpo", "treepo_fixed_init") for s in (0, 1)]}
    # incomplete data: one finished run per strategy, a crashed run, a run in progress with missing metrics
    ok = [_train(uri, ws_cache, "treepo_fixed_init", "incomplete", 0), _train(uri, ws_cache, "grpo", "incomplete", 0)]
    with pytest.MonkeyPatch.context() as m:
        real_step = Trainer.train_step
        m.setattr(Trainer, "train_step", lambda self, step: real_step(self, step) if step < 1 else 1 / 0)
        with pytest.raises(ZeroDivisionError):
            _train(uri, ws_cache, "treepo_fixed_init", "incomplete", 1)
    client = MlflowClient(uri)
    src = client.get_run(ok[0])
    tags = {k: v for k, v in src.data.tags.items() if k.startswith("treepo.") and k != "treepo.seed"}
    running = client.create_run(src.info.experiment_id, run_name="treepo_fixed_init-in-progress-s2",
                                tags={**tags, "treepo.seed": "2"})
    for key in src.data.metrics:  # its history so far, without entropy and the throughput metrics
        if key in ("actor/entropy", "rollout/traj_per_s") or key.startswith("tree/finish"):
            continue
        hist = [m for m in client.get_metric_history(ok[0], key) if m.step <= 2]
        client.log_batch(running.info.run_id, metrics=[Metric(key, m.value, m.timestamp, m.step) for m in hist])
    ids["incomplete"] = ok + [running.info.run_id]
    ids["sweep"] = _sweep(uri, ws_cache, root, client)
    mp.undo()
    yield {"uri": uri, "root": root, "ids": ids}
    mlflow.set_tracking_uri(None)


def _sweep(uri, ws, root, client):
    """A real 2-trial Optuna study over sampler.width, one seed per trial, children under a parent run."""
    journal = str(root / "sw.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.create_study(study_name="sw", storage=storage, direction="minimize")
    exp_id = client.create_experiment("sw")
    parent = client.create_run(exp_id, run_name="sw (sweep)", tags={
        "treepo.sweep_id": "sw", "treepo.sweep_role": "parent", "treepo.optuna_storage": journal, "treepo.study": "sw"})
    for width in (2, 4):
        study.enqueue_trial({"sampler.width": width})
        trial = study.ask()
        w = trial.suggest_categorical("sampler.width", [2, 4])
        rid = _train(uri, ws, "treepo_fixed_init", "sw", 0, f"sampler.width={w}",
                     f"tracking.run_name='t{trial.number} width={w} s0'", sweep_id="sw", trial=trial.number,
                     parent_run_id=parent.info.run_id)
        client.set_tag(rid, "treepo.trial_state", "COMPLETE")
        study.tell(trial, client.get_run(rid).data.metrics["cumulative/rollout/decoded_tokens"])
    return parent.info.run_id


def _check_figures(res):
    pngs = [f for f in res.figures if f.suffix == ".png"]
    assert len(pngs) == len(res.figures) // 2 >= 7
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] in WIDTHS_PX and im.size[1] > 100, (png, im.size)
            width_in = im.size[0] / DPI
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-"
        page = PdfReader(pdf).pages[0]
        assert float(page.mediabox.width) == pytest.approx(width_in * 72, abs=1)  # same size, vector
    with Image.open(res.out_dir / "figures" / "accuracy_vs_step.png") as im:
        assert im.size == (round(SINGLE_COLUMN_IN * DPI), round(2.6 * DPI))
    with Image.open(res.out_dir / "figures" / "compute_matched.png") as im:
        assert im.size == (round(DOUBLE_COLUMN_IN * DPI), round(2.5 * DPI))


def _table(md: str, heading: str) -> list[list[str]]:
    """Rows of the first Markdown table after `## heading`."""
    part = md.split(f"## {heading}\n", 1)[1]
    lines = [ln for ln in part.split("\n## ", 1)[0].splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


@pytest.fixture(scope="module")
def cmp_report(store, tmp_path_factory):
    """The report of the 2 x 2 comparison, built once for the checks of its files and of its page."""
    root = tmp_path_factory.mktemp("cmp_report")
    return build_report(experiment="cmp", tracking_uri=store["uri"], out_dir=root / "r", cache_dir=root / "c",
                        group_by=["treepo.experiment"])


def test_report_of_two_strategies(store, cmp_report):
    res = cmp_report
    assert res.groups == ["grpo", "treepo_fixed_init"]
    _check_figures(res)
    md = res.markdown.read_text()
    for section in ("Summary", "Held-out accuracy vs training step", "Compute-matched view", "Pareto front",
                    "Rollout efficiency", "Training dynamics", "Tree shape", "One sampled tree per group", "Runs"):
        assert f"## {section}" in md
    summary = _table(md, "Summary")
    assert sorted(r[0] for r in summary) == ["grpo", "treepo_fixed_init"] and all(r[1] == "2" for r in summary)
    base = next(r for r in summary if r[0] == "grpo")
    assert "baseline" in base[-1]  # the sequential group is the default baseline
    assert all(r[4] != "n/a" for r in summary) and "tokens % [95% CI]" in md  # accuracy at matched tokens
    runs = _table(md, "Runs")
    assert sorted(r[4] for r in runs) == sorted(store["ids"]["cmp"])
    assert all(r[3] == "FINISHED" for r in runs)
    assert "Optuna" not in md  # not a sweep
    html = res.html.read_text()
    assert html.count("<img ") == md.count("![") and 'src="figures/' not in html  # self-contained
    assert html.count("<svg") == 2 and "<title>" in html  # one tree per group, segment text on hover
    client = MlflowClient(store["uri"])
    values = [client.get_run(r).data.metrics["eval/accuracy"] for r in store["ids"]["cmp"][2:]]
    assert f"{100 * np.mean(values):.1f}" in next(r for r in summary if r[0] == "treepo_fixed_init")[2]


def test_incomplete_data_is_listed_not_fatal(store, tmp_path):
    res = build_report(experiment="incomplete", tracking_uri=store["uri"], out_dir=tmp_path / "r",
                       cache_dir=tmp_path / "c", group_by=["treepo.experiment"])
    md = res.markdown.read_text()
    assert len(res.left_out) == 1 and "ZeroDivisionError" in md  # the failed run and its error
    runs = _table(md, "Runs")
    failed = [r for r in runs if r[3] == "FAILED"]
    assert len(failed) == 1 and failed[0][0] == "(left out)"
    assert any(r[1].endswith("*") and r[3] == "RUNNING" for r in runs)  # in progress, marked
    assert "`actor/entropy` is missing in 1 run(s): treepo_fixed_init-in-progress-s2" in md
    assert "group 'grpo' has one seed" in md
    summary = {r[0]: r for r in _table(md, "Summary")}
    assert summary["treepo_fixed_init"][1] == "2 (1 running)" and summary["grpo"][1] == "1"
    _check_figures(res)


def test_sweep_report_is_logged_to_the_parent_with_optuna_figures(store, tmp_path):
    res = build_report(sweep="sw", tracking_uri=store["uri"], out_dir=tmp_path / "r", cache_dir=tmp_path / "c")
    assert res.parent_run_id == store["ids"]["sweep"]
    assert res.groups == ["t0 width=2", "t1 width=4"]  # trials, named by their run names without the seed
    names = {f.name for f in res.figures}
    assert {"optuna_history.png", "optuna_importances.png", "optuna_history.pdf"} <= names
    client = MlflowClient(store["uri"])
    logged = {a.path for a in client.list_artifacts(res.parent_run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged
    figs = {a.path.split("/")[-1] for a in client.list_artifacts(res.parent_run_id, "report/figures")}
    assert {f.name for f in res.figures} <= figs


def test_cache_is_reused_and_invalidated_when_a_run_changes(store, tmp_path):
    cache = tmp_path / "cache"
    first = load(experiment="cmp", tracking_uri=store["uri"], cache_dir=cache)
    assert first.cache_hits == 0 and len(first.runs) == 4
    again = load(experiment="cmp", tracking_uri=store["uri"], cache_dir=cache)
    assert again.cache_hits == 4
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    rid = store["ids"]["cmp"][0]
    client = MlflowClient(store["uri"])
    last = client.get_run(rid).data._metric_objs[0]
    client.log_batch(rid, metrics=[Metric("custom/probe", 1.5, last.timestamp + 1000, 99)])
    changed = load(experiment="cmp", tracking_uri=store["uri"], cache_dir=cache)
    assert changed.cache_hits == 3
    assert changed.history("custom/probe").loc[99, rid] == 1.5


def test_export_long_format(store, tmp_path):
    data = load(experiment="cmp", tracking_uri=store["uri"], cache_dir=False)
    for fmt in ("csv", "parquet"):
        path = export(data, tmp_path / f"runs.{fmt}")
        back = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert len(back) == len(data.metrics) and back["run_id"].nunique() == 4
        assert {"key", "step", "value", "params.sampler.width", "tags.treepo.seed", "status"} <= set(back.columns)
        acc = back[(back["key"] == "eval/accuracy")]
        assert sorted(acc["step"].unique()) == [1, 2, 3]  # full histories, not last values
    with pytest.raises(ConfigError, match="csv or parquet"):
        export(data, tmp_path / "runs.xlsx")


def test_bad_selection_names_what_exists(store, tmp_path):
    with pytest.raises(ConfigError, match="--experiment='nope'.*cmp"):
        build_report(experiment="nope", tracking_uri=store["uri"], out_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="--baseline"):
        build_report(experiment="cmp", tracking_uri=store["uri"], out_dir=tmp_path / "r", baseline="nope")
    with pytest.raises(ConfigError, match="no such SQLite file"):
        load(experiment="cmp", tracking_uri=f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ('<script>window.addEventListener("load",()=>{const im=[...document.images];document.title="CHECK:"+'
         'JSON.stringify({n:im.length,bad:im.filter(i=>!(i.complete&&i.naturalWidth>0)).length,'
         'svg:document.querySelectorAll("svg").length});console.log("probe-done")});</script>')


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(cmp_report, tmp_path):
    res = cmp_report
    page = tmp_path / "probe.html"
    page.write_text(res.html.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=90)
    found = re.search(r"<title>CHECK:(\{.*?\})</title>", proc.stdout)
    assert found, proc.stderr[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["n"] == res.markdown.read_text().count("![") and check["bad"] == 0 and check["svg"] == 2
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    assert any("probe-done" in ln for ln in console), "console capture works"
    assert [ln for ln in console if "probe-done" not in ln] == []  # no error or message from the page itself


def test_figure_recipes_read_the_store(store, tmp_path):
    sel = {"tracking_uri": store["uri"], "experiment": "cmp", "cache_dir": tmp_path / "c"}
    written, notes = recipes.run_recipe("fig1", selection=sel, out_dir=tmp_path / "f")
    assert [p.name for p in written] == ["fig1_validation_curves.png", "fig1_validation_curves.pdf"]
    with Image.open(written[0]) as im:
        assert im.size[0] == round(SINGLE_COLUMN_IN * DPI)
    assert "no runs of GRPO w/ tree sampling (add --run-missing to train it)" in notes
    written, _ = recipes.run_recipe("table1", selection=sel, out_dir=tmp_path / "f")
    md, tex = (p.read_text() for p in written)
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1] for r in md.splitlines()[2:] if r.startswith("|")}
    assert rows["GRPO"] == "2" and rows["TreePO w/ fixed init divergence"] == "2" and rows["GRPO w/ tree sampling"] == "0"
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule")) and r"\%" in tex


def test_run_missing_trains_what_a_recipe_lacks(store, tmp_path, ws_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "copy.db"
    shutil.copy(Path(store["uri"][len("sqlite:///"):]), db)  # leave the session's store as it is
    uri = f"sqlite:///{db}"
    over = SHORT + [f"warmstart.cache_dir={ws_cache}", "trainer.steps=2"]
    written, notes = recipes.run_recipe("fig1", selection={"tracking_uri": uri, "cache_dir": False}, run_missing=True,
                                        seeds=1, overrides=over, out_dir=tmp_path / "f")
    assert any(n.startswith("trained 1 missing need(s) x 1 seeds") for n in notes), notes
    assert not any(n.startswith("no runs of") for n in notes)
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()],
                                         "tags.`treepo.experiment` = 'grpo_tree_sampling'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_cli_report_and_export(store, tmp_path, capsys):
    """The command line's own entry point, in process (test_cli.py covers --help of every command)."""
    run = lambda *a: (main([*a, "--tracking-uri", store["uri"]]), *capsys.readouterr())
    rc, out, err = run("report", "--experiment", "cmp", "--out", str(tmp_path / "r"), "--group-by", "treepo.experiment")
    assert rc == 0, err
    assert (tmp_path / "r" / "report.html").is_file() and "groups: grpo, treepo_fixed_init" in out
    rc, out, err = run("export", "--experiment", "cmp", "--format", "parquet", "--out", str(tmp_path / "x.parquet"))
    assert rc == 0 and len(pd.read_parquet(tmp_path / "x.parquet")) > 100
    rc, out, err = run("report", "--experiment", "nope")
    assert rc == 2 and "--experiment='nope' is not allowed" in err
    rc, out, err = run("export", "--experiment", "cmp", "--format", "xlsx")
    assert rc == 2 and "invalid choice: 'xlsx'" in err


def test_default_groups_follow_the_strategy_tag_and_keep_experiment_colours(store):
    data = load(experiment="cmp", tracking_uri=store["uri"], cache_dir=False)
    grouping = group_runs(data)
    assert grouping.keys == ["treepo.strategy"] and [g.n for g in grouping.groups] == [2, 2]
    assert {g.style_key for g in grouping.groups} == {"grpo", "treepo_fixed_init"}  # registry colours
    assert [g.sequential for g in grouping.groups].count(True) == 1


def test_report_writes_runs_csv_and_rebuilds_from_it(store, cmp_report, tmp_path, capsys):
    """runs.csv beside the report holds every held-out curve; `report --from-csv` re-derives the summary and the
    time-to-accuracy tables exactly, with no MLflow store and no machine path in the page."""
    md = cmp_report.markdown.read_text()
    csv = cmp_report.out_dir / "runs.csv"
    table = pd.read_csv(csv)
    assert sorted(table["run_id"].unique()) == sorted(store["ids"]["cmp"]) and {"cpu_s", "tokens"} <= set(table)
    assert "sqlite:////" not in md and str(Path(store["uri"][len("sqlite:///"):]).parent) not in md
    rc = main(["report", "--from-csv", str(csv), "--out", str(tmp_path / "again"), "--group-by", "treepo.experiment"])
    assert rc in (0, None), capsys.readouterr().err
    again = (tmp_path / "again" / "report.md").read_text()
    assert _table(again, "Summary") == _table(md, "Summary")
    part = lambda text: text.split("## Compute-matched view", 1)[1].split("\n## ", 1)[0]
    assert [ln for ln in part(again).splitlines() if ln.startswith("|")] == \
        [ln for ln in part(md).splitlines() if ln.startswith("|")]
    rc = main(["report", "--from-csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "never")])
    assert rc == 2 and "--from-csv=" in capsys.readouterr().err and not (tmp_path / "never").exists()
