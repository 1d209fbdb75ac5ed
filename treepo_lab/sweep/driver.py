"""`treepo-lab sweep`: validate the spec, create (or resume) the study and its MLflow parent run, start N
worker processes that split the cores, show progress, and summarise (figures, report) at the end."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from treepo_lab.config import warmstart_config
from treepo_lab.models.warmstart import warmstart
from treepo_lab.registry import ConfigError
from treepo_lab.sweep import mlflow_runs as mr
from treepo_lab.sweep import storage as sto
from treepo_lab.sweep import study as st
from treepo_lab.sweep.space import checked_units, trial_config
from treepo_lab.sweep.spec import SweepSpec, load_spec
from treepo_lab.sweep.validate import validate_spec
from treepo_lab.sweep.worker import quiet
from treepo_lab.track.config import TrackingConfig



def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def log_dir(url: str, name: str) -> Path:
    base = sto.journal_path(url).parent if not sto.is_rdb(url) else Path.cwd() / "optuna"
    return base / f"{name}.logs"


def progress_line(study, spec: SweepSpec, started: float) -> str:
    trials = study.get_trials(deepcopy=False)
    n = st.counts(trials)
    total = len(trials) - len(st.retried(trials))
    target = spec.n_trials if not spec.grid else total
    done = n.get("COMPLETE", 0) + n.get("PRUNED", 0) + n.get("FAIL", 0) - len(st.retried(trials))
    line = (f"[{spec.name}] {done}/{max(target, total)} done: {n.get('COMPLETE', 0)} complete, {n.get('PRUNED', 0)} pruned, "
            f"{n.get('FAIL', 0)} failed; {n.get('RUNNING', 0)} running")
    top = st.best(study, spec)
    if top and not spec.multi_objective:
        o = spec.objectives[0]
        line += f"; best {o.metric}={top[0].values[0]:.4g} (t{top[0].number:02d})"
    elif top:
        line += f"; Pareto front: {len(top)} trials"
    return line + f"; {time.time() - started:.0f} s"


def _start_workers(spec: SweepSpec, url: str, uri: str, n: int) -> list[subprocess.Popen]:
    threads = max(1, cores() // n)
    logs = log_dir(url, spec.name)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_NUM_THREADS": str(threads), "MLFLOW_TRACKING_URI": uri}
    procs = []
    for i in range(n):
        with open(logs / f"worker-{i}.log", "ab") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "treepo_lab.sweep.worker", spec.name, "--storage", url, "--tracking-uri", uri,
                 "--threads", str(threads), "--index", str(i), "--die-with-parent"],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True))  # Ctrl-C reaches us only
    return procs


def _stop_workers(procs: list[subprocess.Popen], grace_s: float = 120.0) -> None:
    """One SIGINT each (a second would interrupt their cleanup), then wait; SIGKILL what hangs."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def warm_start_once(spec: SweepSpec, out) -> None:
    """Build (or find cached) every warm start the trials need before the workers start: N workers would
    otherwise each build the same one at once."""
    done, seen = set(), set()
    for point, seed in checked_units(spec):
        if repr(point) in seen:  # a unit sweep lists each point once per seed; a warm start ignores cfg.seed
            continue
        seen.add(repr(point))
        cfg = trial_config(spec, point, seed)
        ws = warmstart_config(cfg)
        if cfg.model.path is None and repr(ws) not in done:
            done.add(repr(ws))
            t0 = time.time()
            path = warmstart(ws)
            if time.time() - t0 > 5:
                print(f"warm start built: {path} ({time.time() - t0:.0f} s)", file=out, flush=True)


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # stop like Ctrl-C: workers finish their cleanup, runs end KILLED


def prepare(spec_path: str, args: list[str], storage: str | None, tracking_uri: str | None):
    """Everything that can refuse the spec runs before anything is created."""
    spec = validate_spec(load_spec(spec_path, args))
    uri = TrackingConfig(tracking_uri=tracking_uri).resolved_uri()
    url = storage or sto.default_storage(uri, spec.name)
    sto.check_url(url)
    return spec, uri, url


def run_sweep(spec_path: str, args: list[str] | None = None, workers: int = 1, storage: str | None = None,
              tracking_uri: str | None = None, out=None, poll_s: float = 1.0) -> dict:
    out = out or sys.stdout
    quiet()
    if workers < 1:
        raise ConfigError("--workers", workers, "an integer >= 1")
    spec, uri, url = prepare(spec_path, list(args or []), storage, tracking_uri)
    client = MlflowClient(uri)
    mr.check_reachable(uri)
    storage_obj = sto.open_storage(url, spec.heartbeat_s)
    study = st.existing_study(spec.name, storage_obj)
    if study is not None:
        st.check_resumable(study, spec)
        print(f"resuming study {spec.name!r} ({len(study.trials)} trials so far) from {url}", file=out)
        study.set_user_attr(st.SPEC_ATTR, spec.source)  # e.g. a larger sweep.n_trials reaches every worker
        if study.user_attrs.get(st.STOP_ATTR):  # a new attempt: the failure limit counts from here
            study.set_user_attr(st.STOP_ATTR, None)
            study.set_user_attr(st.FAILURE_WINDOW_ATTR, len(study.trials))
    else:
        study = st.create_study(spec, storage_obj, uri)
    parent = study.user_attrs.get(st.PARENT_ATTR)
    if parent is None:
        parent = mr.start_parent(client, spec, uri, url)
        study.set_user_attr(st.PARENT_ATTR, parent)
    else:
        mr.reopen_parent(client, parent)
    if not sto.is_rdb(url):  # trials a killed run left RUNNING: failed, closed in MLflow, enqueued again
        retry = sto.CloseRunsAndRetry(spec.max_retry, mr.close_dead_trial(uri, spec.name, spec.name))
        with sto.study_lock(url):
            reaped = sto.reap_dead_workers(study, retry)
        if reaped:
            print(f"trials {reaped} lost their worker: failed and queued again", file=out)
    exp_id = mr.experiment(client, spec, uri)
    fixed = mr.reconcile(client, exp_id, spec.name, study.get_trials(deepcopy=False))
    if fixed:
        print(f"trials {fixed}: MLflow runs given their final Optuna state", file=out)
    print(f"sweep {spec.name}: {workers} worker(s) x {max(1, cores() // workers)} thread(s); storage {url}; "
          f"MLflow {uri} (experiment {spec.name}); worker logs in {log_dir(url, spec.name)}", file=out)
    warm_start_once(spec, out)
    started, status = time.time(), "finished"
    prev = signal.signal(signal.SIGTERM, _sigterm)
    # a process started in the background of a shell (nohup ... &, CI) inherits SIGINT ignored: Ctrl-C or
    # `kill -INT` must still stop the sweep cleanly
    prev_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = _start_workers(spec, url, uri, workers)
    tty, last = out.isatty() if hasattr(out, "isatty") else False, ""
    try:
        while any(p.poll() is None for p in procs):
            line = progress_line(study, spec, started)
            if line.rsplit(";", 1)[0] != last.rsplit(";", 1)[0] or tty:
                print(("\r" if tty else "") + line, end="" if tty else "\n", file=out, flush=True)
                last = line
            time.sleep(poll_s)
    except KeyboardInterrupt:
        status = "interrupted"
        print("\ninterrupted: stopping the workers (running trials end KILLED in MLflow, and rerun next time)",
              file=out, flush=True)
        _stop_workers(procs)
    finally:
        signal.signal(signal.SIGTERM, prev)
        signal.signal(signal.SIGINT, prev_int)
    print(("\n" if tty else "") + progress_line(study, spec, started), file=out)
    stop = study.user_attrs.get(st.STOP_ATTR)
    if stop and status == "finished":
        status = "stopped"
        print(f"sweep stopped: {stop['reason']}; the first error:\n  {stop['error']}", file=out)
    crashed = [p.returncode for p in procs if p.returncode not in (0, 130, -2)]
    if crashed and status == "finished" and st.work_left(spec, study.get_trials(deepcopy=False)):
        status = "workers-crashed"
        print(f"workers exited with {crashed}: see {log_dir(url, spec.name)}", file=out)
    mr.reconcile(client, exp_id, spec.name, study.get_trials(deepcopy=False))
    summary = mr.finish_parent(client, parent, study, spec, status)
    summary.update(parent_run_id=parent, storage=url, tracking_uri=uri, report=_report(spec, uri, study, out))
    _print_summary(summary, spec, uri, out)
    return summary


def _report(spec: SweepSpec, uri: str, study, out) -> str | None:
    """The comparison report, logged to the parent run."""
    from treepo_lab.analysis import build_report  # pandas and matplotlib: only once the sweep is done

    try:
        return str(build_report(sweep=spec.name, tracking_uri=uri, study=study))
    except Exception as err:  # the sweep's results stand without the report
        print(f"report not built: {type(err).__name__}: {err}", file=out)
        return None


def _print_summary(summary: dict, spec: SweepSpec, uri: str, out) -> None:
    front = summary.get("best") or summary.get("pareto_front") or []
    title = "best trial" if not spec.multi_objective else f"Pareto front ({len(front)} trials)"
    if front:
        print(f"{title}:", file=out)
    for t in front:
        vals = ", ".join(f"{k}={v:.4g}" for k, v in t["values"].items())
        spread = t.get("spread")
        # a unit trial has one seed: no spread to show
        sd = f" (sd over seeds {', '.join(f'{s:.3g}' for s in spread)})" if spread and not spec.per_unit else ""
        print(f"  t{t['trial']:02d} {vals}{sd}  {t['params']}", file=out)
    if summary.get("report"):
        print(f"report: {summary['report']}", file=out)
    cli = Path(sys.executable).parent / "treepo-lab"
    print(f"MLflow UI: {cli if cli.exists() else 'treepo-lab'} ui tracking.tracking_uri={uri}   then open "
          f"http://127.0.0.1:5000, experiment {spec.name!r} (parent run {summary['parent_run_id']})", file=out)


def status_text(study_name: str, storage: str | None, tracking_uri: str | None = None) -> str:
    uri = TrackingConfig(tracking_uri=tracking_uri).resolved_uri()
    url = storage or sto.default_storage(uri, study_name)
    sto.check_url(url)
    if not sto.is_rdb(url) and not sto.journal_path(url).is_file():
        raise FileNotFoundError(f"no study storage at {url} (pass --storage)")
    study = st.existing_study(study_name, sto.open_storage(url))
    if study is None:
        raise ConfigError("study", study_name, f"a study in {url}")
    from treepo_lab.sweep.spec import parse_spec

    spec = parse_spec(study.user_attrs[st.SPEC_ATTR])
    trials = study.get_trials(deepcopy=False)
    lines = [progress_line(study, spec, time.time()).rsplit(";", 1)[0]]
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
        sel = [t for t in trials if t.state.name == state]
        if not sel:
            continue
        lines.append(f"{state} ({len(sel)}):")
        for t in sel:
            vals = " ".join(f"{v:.4g}" for v in (t.values or []) if v is not None and math.isfinite(v))
            extra = t.user_attrs.get(st.ERROR_ATTR) or t.user_attrs.get(sto.FAIL_REASON_ATTR) or ""
            if state == "RUNNING" and t.user_attrs.get(sto.WORKER_ATTR):
                w = t.user_attrs[sto.WORKER_ATTR]
                extra = f"worker {w['host']}:{w['pid']} since {time.strftime('%H:%M:%S', time.localtime(w['start']))}"
            lines.append(f"  t{t.number:02d} {vals} {t.params} {extra}".rstrip())
    top = st.best(study, spec)
    if top:
        lines.append("Pareto front:" if spec.multi_objective else "best:")
        lines += [f"  t{t.number:02d} {t.values} {t.params}" for t in top]
    stop = study.user_attrs.get(st.STOP_ATTR)
    if stop:
        lines.append(f"stopped: {stop['reason']}: {stop['error']}")
    return "\n".join(lines)
