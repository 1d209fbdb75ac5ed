"""The MLflow tracker against real MLflow: a SQLite store in a temp dir, and one real `mlflow server`."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from treepo_lab.registry import ConfigError
from treepo_lab.tags import HOST_TAG
from treepo_lab.track.config import TrackingConfig
from treepo_lab.track.mlflow_tracker import EXPERIMENT_KIND, Tracker, TrackingError
from treepo_lab.track.naming import default_experiment_name, flatten_config, git_commit, run_params, sanitize_key
from treepo_lab.track.null import NULL_TRACKER
from treepo_lab.track.strategy import strategy_tags
from treepo_lab.track.ui import stop_ui, wait_healthy

CFG = {
    "name": "default",
    "description": "TreePO, a test config",
    "paper_ref": "Table 1",
    "seed": 3,
    "task": {"name": "arith", "difficulty": 2},
    "model": {"path": None},
    "warmstart": {"steps": 10, "task": {"name": "arith", "difficulty": 2}},
    "sampler": {"kind": "tree", "width": 16, "max_depth": 8, "segment_len": 16, "div_policy": "fixed_avg",
                "fallback_cut": "random", "init_div_range": None, "div_temp_schedule": {"kind": "constant"}},
    "advantage": {"estimator": "treepo"},
    "loss": {"name": "ppo"},
    "many": {f"k{i:03d}": i for i in range(150)},  # > 100 params: needs more than one log_batch
    "long": "x" * 700,  # over the 500-char param limit of older servers
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # one database for the module: creating the schema costs seconds, experiments keep tests apart
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch):
    # Tracker.start sets the global tracking URI and exports MLFLOW_TRACKING_URI; undo both
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)


def start(uri: str, experiment: str, **kw) -> Tracker:
    # experiment_name=experiment keeps the tests' runs apart; the default (one per task and model) is tested on its own
    tcfg = TrackingConfig(tracking_uri=uri, system_metrics=kw.pop("system_metrics", False),
                          tags=kw.pop("tags", {}),
                          experiment_name=kw.pop("experiment_name", None if kw.get("sweep_id") else experiment))
    return Tracker.start(kw.pop("cfg", CFG), tcfg, experiment=experiment, seed=3, engine="hf",
                         device="cpu", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_run(uri: str, run_id: str):
    return MlflowClient(uri).get_run(run_id)


# ----------------------------------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("key, want", [
    ("eval/pass@8", "eval/pass_at_8"),
    ("timing_s/gen", "timing_s/gen"),
    ("actor/pg_clipfrac", "actor/pg_clipfrac"),
    ("a:b|c", "a_b_c"),
    ("/x//y/./z/", "x/y/z"),
    ("../up", "up"),
    ("ünï", "_n_"),
])
def test_sanitize_key(key, want):
    assert sanitize_key(key) == want
    assert mlflow.utils.validation.validate_param_and_metric_name(sanitize_key(key))


def test_flatten_uses_yaml_spellings_and_params_drop_free_text():
    flat = flatten_config({**CFG, "flags": {"on": True, "range": [2, 8]}})
    assert flat["sampler.width"] == "16" and flat["sampler.init_div_range"] == "null"
    assert flat["flags.on"] == "true" and flat["flags.range"] == "[2, 8]"
    assert flat["sampler.div_temp_schedule.kind"] == "constant"
    params = run_params(CFG)
    assert "description" not in params and "paper_ref" not in params
    assert not [k for k in params if k.startswith("warmstart.task.")] and params["warmstart.steps"] == "10"


def test_strategy_tags_short_and_long():
    tags = strategy_tags(CFG)
    assert tags["treepo.strategy"] == "treepo"
    assert tags["treepo.strategy.shape"] == "8x16" and tags["treepo.strategy.init_div"] == "fixed b=2"
    more = strategy_tags({**CFG, "sampler": {**CFG["sampler"], "init_div_range": [2, 8], "max_depth": 4,
                                             "segment_len": 32}})
    assert more["treepo.strategy"] == "4x32 init2-8"  # the telling part first, the label is cut in the UI
    assert "random b0 in [2, 8]" in more["treepo.strategy.long"]
    seq = strategy_tags({"sampler": {"kind": "sequential"}, "advantage": {"estimator": "grpo"}})
    assert seq["treepo.strategy"] == "grpo" and "treepo.strategy.shape" not in seq


def test_default_experiment_is_one_per_task_and_model():
    assert default_experiment_name(CFG) == "arith_d2-tiny"
    hf = {"task": {"name": "file", "path": "data/gsm8k.jsonl"}, "model": {"path": "Qwen/Qwen2.5-0.5B/"}}
    assert default_experiment_name(hf) == "gsm8k-Qwen2.5-0.5B"


def test_tracking_config(monkeypatch, tmp_path):
    TrackingConfig().validate()
    for bad in ({"log_trees_every": -1}, {"n_trees_logged": -2}, {"tracking_uri": " "},
                {"experiment_name": ""}, {"tags": {"owner": 3}}):
        with pytest.raises(ConfigError):
            TrackingConfig(**bad).validate()
    monkeypatch.chdir(tmp_path)
    assert TrackingConfig().resolved_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert TrackingConfig().resolved_uri() == "http://example:5000"
    assert TrackingConfig(tracking_uri="sqlite:////abs/x.db").resolved_uri() == "sqlite:////abs/x.db"


def test_disabled_is_null_tracker():
    tr = Tracker.start(CFG, TrackingConfig(enabled=False), experiment="x", seed=0, engine="hf", device="cpu")
    assert tr is NULL_TRACKER and tr.run_id is None
    with tr:
        tr.log_metrics({"a": 1}, step=0)
        tr.log_dict({"a": 1}, "a.json")
        tr.log_trees([], step=1)
        tr.log_eval_samples([], step=1)


# ----------------------------------------------------------------------------------------- SQLite store

def test_round_trip(store, tmp_path):
    with start(store, "roundtrip", sweep_id=None, trial=None, tags={"owner": "ci"}) as tr:
        for step in range(3):
            tr.log_metrics({"critic/score/mean": 0.5 * step, "eval/pass@8": step / 10,
                            "maybe": None, "nan_ok": float("nan")}, step=step)
        tr.log_dict({"nodes": [1, 2]}, "trees/step_000002.json")
        (tmp_path / "sample.txt").write_text("hello")
        tr.log_artifact(tmp_path / "sample.txt", "eval_samples")
        run_id = tr.run_id
    runs = mlflow.search_runs(experiment_names=["roundtrip"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("roundtrip-s3-")
    params, tags = run.data.params, run.data.tags
    assert len([k for k in params if k.startswith("many.")]) == 150
    assert params["sampler.width"] == "16" and params["advantage.estimator"] == "treepo"
    assert len(params["long"]) == 500 and params["long"].endswith("...")
    assert tags["treepo.experiment"] == "roundtrip" and tags["treepo.seed"] == "3"
    assert tags["treepo.engine"] == "hf" and tags["treepo.device"] == "cpu" and tags["owner"] == "ci"
    assert tags[HOST_TAG] == socket.gethostname() and HOST_TAG == "treepo.host"  # the machine it ran on
    assert tags["treepo.strategy"] == "treepo" and tags["treepo.strategy.shape"] == "8x16" and tags["treepo.version"]
    commit = git_commit()  # the checkout's commit, in MLflow's standard tag (absent outside a git checkout)
    assert tags.get("mlflow.source.git.commit") == (None if commit == "unknown" else commit)
    assert tags["mlflow.note.content"].startswith("**default**: TreePO, a test config")
    assert "Table 1" in tags["mlflow.note.content"] and "description" not in params
    exp = MlflowClient(store).get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND == "custom_model_development"
    assert "treepo.strategy" in exp.tags["mlflow.note.content"]
    client = MlflowClient(store)
    hist = client.get_metric_history(run_id, "eval/pass_at_8")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert "1_compare/eval_accuracy" not in run.data.metrics  # aliases only for the headline metrics
    assert "maybe" not in run.data.metrics and math.isnan(run.data.metrics["nan_ok"])
    # artifacts land beside the database, not in ./mlruns of the working directory
    assert run.info.artifact_uri.startswith(Path(store[len("sqlite:///"):]).parent.as_uri())
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "trees", "eval_samples"} <= files
    cfg_back = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml"))
    assert cfg_back["sampler"]["width"] == 16


def test_comparable_runs_share_one_experiment(store):
    """Two registry experiments on the same task and model: one MLflow experiment, told apart by tags."""
    more = {**CFG, "name": "treepo_more_init", "sampler": {**CFG["sampler"], "init_div_range": [2, 8]}}
    with start(store, "treepo_fixed_init", experiment_name=None) as a, \
         start(store, "treepo_more_init", cfg=more, experiment_name=None) as b:
        a.log_metrics({"eval/accuracy": 0.5, "cumulative/rollout/decoded_tokens": 100}, step=1)
    assert a.experiment_id == b.experiment_id and a.experiment_name == "arith_d2-tiny"
    runs = {r.info.run_name.split("-s3-")[0]: r for r in
            mlflow.search_runs(experiment_names=["arith_d2-tiny"], output_format="list")}
    assert set(runs) == {"treepo_fixed_init", "treepo_more_init"}
    assert runs["treepo_more_init"].data.tags["treepo.strategy"] == "init2-8"
    assert runs["treepo_fixed_init"].data.metrics["1_compare/eval_accuracy"] == 0.5  # sorts first in the charts
    assert runs["treepo_fixed_init"].data.metrics["1_compare/decoded_tokens_total"] == 100
    assert a.run_url().endswith(f"/#/experiments/{a.experiment_id}/runs/{a.run_id}")


def test_trees_and_eval_samples_are_readable_artifacts(store, tmp_path):
    from treepo_lab.rollout.tree import Leaf, Node, Tree

    tree = Tree(prompt_ids=[1, 2], prompt_text="3+4=", answer="7")
    tree.add(Node(0, None, 1, 1, tokens=[5, 6], logprobs=[-0.1, -0.3], entropies=[1.0, 1.0], text="so "))
    tree.add(Node(1, 0, 2, 2, tokens=[7], logprobs=[-0.2], entropies=[1.0], text="\\boxed{7}", finish_reason="finished"))
    tree.add(Node(2, 0, 2, 2, tokens=[8], logprobs=[-2.0], entropies=[1.0], text="\\boxed{8}", finish_reason="finished"))
    tree.leaves = [Leaf([0, 1], "finished", reward=1.0, correct=True), Leaf([0, 2], "finished", reward=-1.0, correct=False)]
    records = [{"id": "p0", "prompt": "3+4=", "answer": "7", "responses": ["\\boxed{7}", "\\boxed{8}"],
                "correct": [True, False], "length": [3, 3], "maj_correct": True}]
    with start(store, "artifacts") as tr:
        tr.log_trees([tree.to_dict()], step=10)
        tr.log_eval_samples(records, step=10)
        tr.log_eval_samples(records, step=20)  # appended to the same table
    art = get_run(store, tr.run_id).info.artifact_uri
    text = mlflow.artifacts.load_text(f"{art}/trees/step000010.json")
    assert len(text.splitlines()) < 15 and "prompt_ids" not in text and "logprobs" not in text
    back = json.loads(text)[0]
    assert [lf["text"] for lf in back["leaves"]] == ["so \\boxed{7}", "so \\boxed{8}"]
    assert back["nodes"][0]["mean_logprob"] == -0.2 and back["nodes"][1]["text"] == "\\boxed{7}"
    page = mlflow.artifacts.load_text(f"{art}/trees/step000010.html")
    assert "<svg" in page and "so \\boxed{7}" in page and "3+4=" in page
    table = json.loads(mlflow.artifacts.load_text(f"{art}/eval_samples.json"))
    cols = table["columns"]
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert [(r["step"], r["sample"], r["correct"]) for r in rows] == [(10, 0, True), (10, 1, False),
                                                                     (20, 0, True), (20, 1, False)]


def test_exception_marks_failed(store):
    with pytest.raises(ValueError), start(store, "crash") as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        int("not a number")
    run = get_run(store, tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["treepo.error"].startswith("ValueError")
    assert mlflow.active_run() is None


def test_keyboard_interrupt_marks_killed(store):
    # system metrics: on, or off with a warning where psutil is missing
    with pytest.raises(KeyboardInterrupt), start(store, "interrupt", system_metrics=True) as tr:
        raise KeyboardInterrupt
    assert get_run(store, tr.run_id).info.status == "KILLED"


def test_sigterm_marks_killed(store):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, start(store, "sigterm") as tr:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert get_run(store, tr.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("peer", [None, "rank 1: ValueError: boom"])
def test_sigterm_while_the_run_is_created_still_ends_it(store, monkeypatch, peer):
    """torchrun's SIGTERM can reach rank 0 while its run is being created (another rank died at its first
    step): the run ends KILLED, or FAILED with the other rank's error, never left RUNNING."""
    real, created = mlflow.start_run, []

    def start_run_then_sigterm(*args, **kwargs):
        created.append(real(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)  # held until the handler is set
        return created[-1]
    monkeypatch.setattr(mlflow, "start_run", start_run_then_sigterm)
    with pytest.raises(SystemExit):
        start(store, "sigterm_early", peer_error=(lambda: RuntimeError(peer)) if peer else None)
        time.sleep(5)  # the held SIGTERM interrupts this at the latest
    run = get_run(store, created[0].info.run_id)
    assert run.info.status == ("FAILED" if peer else "KILLED")
    if peer:
        assert peer in run.data.tags["treepo.error"]


def test_ctrl_c_during_a_store_write_waits_for_the_write(store, monkeypatch):
    """A KeyboardInterrupt inside an SQLite write left its transaction open and every later write of the
    process "database is locked" (a sweep worker could not end its run KILLED): Ctrl-C is held until the
    write is done, then raised."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own Ctrl-C (conftest restores the one before)
    with pytest.raises(KeyboardInterrupt), start(store, "held") as tr:
        real = tr.client.log_batch

        def interrupted_write(*args, **kwargs):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as the write starts
            return real(*args, **kwargs)
        monkeypatch.setattr(tr.client, "log_batch", interrupted_write)
        tr.log_metrics({"loss": 1.5}, step=0)
    monkeypatch.undo()
    run = get_run(store, tr.run_id)
    assert run.info.status == "KILLED" and run.data.metrics["loss"] == 1.5


def test_reports_select_a_sweep_by_the_tag_its_runs_carry(store):
    """The sweep tag the tracker writes is the one the reports select by: a sweep run filed under another
    experiment name is still found by `--sweep` (the two modules once used different strings)."""
    from treepo_lab.analysis.selection import select_runs
    from treepo_lab.tags import SWEEP_TAG

    with start(store, "base_exp", sweep_id="tagged_sweep", trial=0, experiment_name="elsewhere") as run:
        pass
    assert get_run(store, run.run_id).data.tags[SWEEP_TAG] == "tagged_sweep"
    found = select_runs(MlflowClient(store), sweep="tagged_sweep")
    assert [r.info.run_id for r in found.runs] == [run.run_id]


def test_nested_trials_and_resume(store):
    with (start(store, "sweep-parent", cfg={"sweep": "div"}, sweep_id="div_sweep") as parent,
          start(store, "base_exp", sweep_id="div_sweep", trial=4, parent_run_id=parent.run_id) as child):
        child.log_metrics({"loss": 1.0}, step=0)
    child_run = get_run(store, child.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.run_id
    tags = child_run.data.tags
    assert tags["treepo.trial"] == "4" and tags["treepo.sweep_id"] == "div_sweep"
    assert tags["treepo.experiment"] == "base_exp"
    assert child_run.info.experiment_id == parent.experiment_id  # one MLflow experiment per sweep
    assert "-t4-" in child_run.info.run_name
    # resume by id: same params are fine, metrics continue, status goes back to FINISHED
    with start(store, "base_exp", sweep_id="div_sweep", resume_run_id=child.run_id) as again:
        assert again.run_id == child.run_id
        assert get_run(store, child.run_id).info.status == "RUNNING"
        again.log_metrics({"loss": 0.5}, step=1)
    assert get_run(store, child.run_id).info.status == "FINISHED"
    assert len(MlflowClient(store).get_metric_history(child.run_id, "loss")) == 2


# ----------------------------------------------------------------------------------------- tracking server

def test_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        start(uri, "nowhere")
    assert time.monotonic() - t0 < 10


@pytest.mark.slow  # ~15-20 s: the server takes ~12 s to come up on 2 shared cores
def test_server_serves_runs(store, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the module's store (its schema exists: no migrations at startup), one worker, and no job runner
    # (it forks half a dozen huey consumers we do not need)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(tmp_path / "server.log", "w") as log:
        # its own session, so the uvicorn child it spawns is stopped with it
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _check_server(url, proc)
        except Exception:
            print((tmp_path / "server.log").read_text()[-3000:])
            raise
        finally:
            stop_ui(proc)  # the group the server was started in


def _check_server(url: str, proc: subprocess.Popen) -> None:
    wait_healthy(url, proc, timeout_s=40)
    with start(url, "served") as tr:
        tr.log_metrics({"eval/pass@8": 0.25}, step=7)
    query = urllib.parse.urlencode({"run_id": tr.run_id})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?{query}", timeout=10) as r:
        run = json.load(r)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    metrics = {m["key"]: (m["value"], m["step"]) for m in run["data"]["metrics"]}
    assert params["sampler.div_policy"] == "fixed_avg" and tags["treepo.strategy"] == "treepo"
    assert metrics["eval/pass_at_8"] == (0.25, 7)
    body = json.dumps({"experiment_ids": [run["info"]["experiment_id"]],
                       "filter": "tags.`treepo.strategy` = 'treepo'"}).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert [x["info"]["run_id"] for x in json.load(r)["runs"]] == [tr.run_id]


# ----------------------------------------------------------------------------------------- the registry

# sampler knobs that do not change which strategy a run is (sampling noise, safety caps, a block size
# that only block cuts read); everything else in `sampler` and `advantage` does
UI_LABEL_CHARS = 10  # MLflow 3.17's runs table shows "Group: treepo in..." for a longer value
NOT_STRATEGY = {"seed", "temperature", "top_p", "top_k", "fallback_block_size", "require_aligned_window",
                "max_fallback_rounds"}


def _strategy_config(cfg: dict) -> str:
    s = {k: v for k, v in cfg["sampler"].items() if k not in NOT_STRATEGY}
    if s["kind"] == "sequential":  # no tree: divergence, shape and fallback knobs are unused
        s = {"kind": "sequential"}
    return json.dumps({"sampler": s, "advantage": cfg["advantage"]}, sort_keys=True)


def test_every_registry_strategy_has_its_own_label():
    """Over ALL experiments/*.yaml: two experiments get the same `treepo.strategy` exactly when their
    strategy knobs are equal, and so do the label's first 10 characters (what the UI's group label
    shows before it cuts the text)."""
    from treepo_lab.config import list_experiments, load_config
    from treepo_lab.track.naming import plain_config

    by_label: dict[str, set[str]] = {}
    by_config: dict[str, set[str]] = {}
    label_of = {}
    for name in list_experiments():
        cfg = plain_config(load_config(name))
        tags = strategy_tags(cfg)
        label_of[name] = tags["treepo.strategy"]
        by_label.setdefault(tags["treepo.strategy"][:UI_LABEL_CHARS], set()).add(name)
        by_config.setdefault(_strategy_config(cfg), set()).add(name)
    assert sorted(map(sorted, by_label.values())) == sorted(map(sorted, by_config.values())), label_of
    # the rows the issue found collapsed into one group
    assert len({label_of[n] for n in ("treepo_fixed_init", "treepo_more_init", "seg_4x32", "seg_2x64",
                                       "seg_16x8", "grpo", "grpo_tree_sampling")}) == 7
