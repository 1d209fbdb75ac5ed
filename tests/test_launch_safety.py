"""Issue 30: what `treepo-lab train trainer.nproc=N`, `sweep`, `demo` and `paper` start, bind and refuse.

- a real 2-rank run (`treepo-lab train trainer.nproc=2`, gloo on CPU): every TCP socket the launcher and its
  ranks listen on is on 127.0.0.0/8 (torch's own TCPStore server listens on all interfaces), and SIGTERM to
  the launcher ends the run KILLED with "stopped by SIGTERM" and the resume hint (exit 143);
- an existing tracking.run_name with trainer.nproc=2 is refused in one line before any rank starts;
- a sweep whose trials need more GPUs than the machine has is refused before any study, run or file exists;
  `nproc_per_trial: 2.5` says "an integer >= 1";
- `paper --findings` with malformed YAML names the file;
- options and key=value overrides parse in any order for sweep, demo and paper: every example their
  `--help` prints, and `--only ID ...` never swallows an override.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_distributed import BASE, EXPERIMENT

from treepo_lab import cli
from treepo_lab.commands import paper
from treepo_lab.commands import sweep as sweep_command
from treepo_lab.commands import warmstart as warmstart_command
from treepo_lab.sweep import driver
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train import launch, rendezvous

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@pytest.fixture()
def here(tmp_path, monkeypatch):
    """A fresh folder as the current one, no store from the environment: whatever a command creates is here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return tmp_path


def _listening(procs) -> set[tuple[int, str, int]]:
    found = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:  # it exited meanwhile
            continue
        found |= {(p.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def ranks_of(launcher: psutil.Process) -> list[psutil.Process]:
    """The launcher's children running treepo_lab.cli, read while the ranks train: a subprocess the launcher
    starts has its cmdline until it execs (CI saw one), so an earlier sample can count it."""
    ranks = []
    for p in launcher.children():
        try:
            if "treepo_lab.cli" in p.cmdline():
                ranks.append(p)
        except psutil.Error:  # it exited meanwhile: a rank lives until the stop
            pass
    return ranks


@pytest.fixture(scope="module")
def live(ws_cache, tmp_path_factory):
    """A 2-rank run started as users do; its listening sockets sampled until its first checkpoint, then
    SIGTERM to the launcher."""
    tmp = tmp_path_factory.mktemp("live")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = ["train", f"experiment={EXPERIMENT}", *BASE, f"warmstart.cache_dir={ws_cache}", f"tracking.tracking_uri={uri}",
            "tracking.run_name=live", "trainer.steps=400", "trainer.save_every=1", "trainer.nproc=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TORCH_NUM_THREADS="1")
    out, err = open(tmp / "stdout", "w+"), open(tmp / "stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "treepo_lab.cli", *args], cwd=tmp, env=env, stdout=out, stderr=err)
    launcher, seen, ranks = psutil.Process(proc.pid), set(), set()
    checkpoints = tmp / "runs" / "live" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            children = launcher.children(recursive=True)
            seen |= _listening([launcher, *children])
            if ckpt.latest_checkpoint(checkpoints) is not None:  # training runs: every socket is open
                ranks = {p.pid for p in ranks_of(launcher)}  # now, not while a subprocess was forking
                break
            time.sleep(0.2)
        running = proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    out.seek(0), err.seek(0)
    return {"code": code, "stderr": err.read(), "running": running, "took": took, "seen": seen,
            "launcher": proc.pid, "ranks": ranks, "uri": uri, "checkpoints": checkpoints}


def test_a_two_rank_run_listens_on_loopback_only(live):
    assert live["running"], live["stderr"][-3000:]
    assert len(live["ranks"]) == 2, live["ranks"]
    stores = {s for s in live["seen"] if s[0] == live["launcher"]}
    assert stores, live["seen"]  # the launcher's rendezvous / bootstrap stores were seen: the check can fail
    assert {s for s in live["seen"] if s[0] in live["ranks"]}, live["seen"]  # and the ranks' gloo sockets
    outside = [s for s in live["seen"] if ipaddress.ip_address(s[1]) not in LOOPBACK]
    assert not outside, outside


def test_sigterm_to_the_launcher_ends_the_run_killed_with_the_resume_hint(live):
    assert live["running"], live["stderr"][-3000:]
    assert live["code"] == 128 + signal.SIGTERM, live["stderr"][-3000:]
    lines = [ln for ln in live["stderr"].splitlines() if ln.strip()]
    assert lines[-1].startswith("stopped by SIGTERM:") and "treepo-lab resume" in lines[-1], lines[-5:]
    assert any(ln.startswith("interrupted: checkpoint") and "resume with: treepo-lab resume" in ln for ln in lines), lines
    assert "FAILED" not in live["stderr"] and "Traceback" not in live["stderr"], live["stderr"][-3000:]
    client = MlflowClient(live["uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("live", "KILLED")]
    assert ckpt.latest_checkpoint(live["checkpoints"]) is not None  # what the hint resumes from


def test_the_store_binds_the_address_it_is_given():
    store = rendezvous.listen_store("127.0.0.1", 0)
    mine = {c.laddr for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert (("127.0.0.1", store.port)) in {(a.ip, a.port) for a in mine}
    assert not [a for a in mine if a.port == store.port and a.ip != "127.0.0.1"]
    with pytest.raises(ValueError, match="every interface"):
        rendezvous.listen_store("0.0.0.0", 0)


def test_an_existing_run_name_is_refused_before_any_rank_starts(here, ws_cache, capsys, monkeypatch):
    (here / "runs" / "taken").mkdir(parents=True)
    started = []
    monkeypatch.setattr(launch, "launch_ranks", lambda *a: started.append(a))
    code = cli.main(["train", f"experiment={EXPERIMENT}", *BASE, f"warmstart.cache_dir={ws_cache}",
                     "tracking.run_name=taken", "trainer.nproc=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not started
    assert err[0].startswith("treepo-lab train: tracking.run_name='taken' is not allowed: a new name"), err
    assert "FAILED" not in "\n".join(err) and len(err) == 2  # the line and its hint
    assert sorted(p.name for p in here.iterdir()) == ["runs"] and list((here / "runs" / "taken").iterdir()) == []


SPEC = """\
name: gpus
experiment: treepo_fixed_init
overrides: {{trainer.steps: 2, trainer.prompts_per_step: 4, model.device: cuda}}
grid: {{sampler.width: "choice(4, 8)"}}
objectives: [{{metric: eval/accuracy, direction: maximize}}]
seeds: [0]
nproc_per_trial: {nproc}
"""


def _sweep(here, capsys, nproc) -> tuple[int, list[str]]:
    spec = here / "gpus.yaml"
    spec.write_text(SPEC.format(nproc=nproc))
    code = cli.main(["sweep", str(spec), "--workers", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert sorted(p.name for p in here.iterdir()) == ["gpus.yaml"]  # no study, store, log or report
    return code, lines


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the machine has the GPUs the spec asks for")
def test_a_sweep_needing_missing_gpus_is_refused_before_anything_exists(here, capsys):
    code, lines = _sweep(here, capsys, 2)
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith(f"treepo-lab sweep: nproc_per_trial=2 is not allowed: at most the "
                               f"{torch.cuda.device_count()} visible GPUs"), lines


def test_a_fractional_nproc_per_trial_asks_for_an_integer(here, capsys):
    code, lines = _sweep(here, capsys, 2.5)
    assert code == 2 and lines[0] == "treepo-lab sweep: nproc_per_trial=2.5 is not allowed: an integer >= 1", lines


def _examples(name: str) -> list[list[str]]:
    """The `e.g. treepo-lab NAME ...` lines of a command's --help, as argument lists."""
    return [ln.split("e.g.", 1)[1].split("(")[0].split()[2:] for ln in cli.command_help(name).splitlines()
            if ln.strip().startswith("e.g. treepo-lab")]


def test_the_sweep_help_example_parses_with_options_and_overrides_in_any_order():
    (example,) = _examples("sweep")
    assert example == ["sweeps/demo.yaml", "--workers", "2", "trainer.steps=30", "sweep.n_trials=8"]
    for args in (example, ["trainer.steps=30", "sweeps/demo.yaml", "sweep.n_trials=8", "--workers", "2"]):
        a = sweep_command.parse(args)
        assert (a.spec, a.workers, a.overrides) == ("sweeps/demo.yaml", 2, ["trainer.steps=30", "sweep.n_trials=8"])
    # an option's value may hold '=' (it is never an override)
    a = sweep_command.parse(["s.yaml", "--storage", "postgresql://u@h:5432/db?sslmode=require", "x.y=1"])
    assert a.storage.endswith("sslmode=require") and a.overrides == ["x.y=1"]


def test_the_demo_help_example_reaches_the_sweep_parsed(monkeypatch):
    calls = []
    monkeypatch.setattr(warmstart_command, "run", lambda own, overrides, raw, default: calls.append(("warmstart", overrides)))
    monkeypatch.setattr(driver, "run_sweep", lambda spec, overrides, workers, storage, uri: calls.append(
        ("sweep", Path(spec).name, overrides, workers)) or {"status": "finished"})
    (example,) = _examples("demo")
    assert cli.main(["demo", *example]) == 0
    assert calls == [("warmstart", example), ("sweep", "demo.yaml", example, 2)]
    calls.clear()
    monkeypatch.setattr(sweep_command, "parse", lambda args: (_ for _ in ()).throw(SystemExit(2)))
    with pytest.raises(SystemExit):  # a bad argument stops before the warm start
        cli.main(["demo", "trainer.steps=1"])
    assert calls == []


def test_the_paper_usage_parses_in_any_order_and_only_never_takes_an_override():
    usage = cli.COMMANDS["paper"].usage  # treepo-lab paper [--workers 2] [--seeds N] [--only ID ...] [--out DIR] ...
    assert all(o in usage for o in ("--workers", "--seeds", "--only ID ...", "--out DIR", "[key=value ...]"))
    full = ["--workers", "2", "--seeds", "3", "--only", "F1", "F2", "--out", "reports/x", "trainer.nproc=3"]
    orders = [full, ["trainer.nproc=3", *full[:-1]], ["--only", "F1", "trainer.nproc=3", "F2", "--workers", "2",
                                                     "--seeds", "3", "--out", "reports/x"]]
    for args in orders:
        a = paper.parse(args)
        assert (a.workers, a.seeds, a.only, a.out, a.overrides) == (2, 3, ["F1", "F2"], "reports/x", ["trainer.nproc=3"]), args
    a = paper.parse(["--only", "F1", "trainer.nproc=3", "sweep.n_trials=2"])
    assert a.only == ["F1"] and a.overrides == ["trainer.nproc=3", "sweep.n_trials=2"]


def test_malformed_findings_yaml_is_refused_naming_the_file(here, capsys):
    bad = here / "findings.yaml"
    bad.write_text("findings:\n  - id: x\n    claim: [unclosed\n")
    code = cli.main(["paper", "--findings", str(bad), "trainer.steps=2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[0].startswith(f"treepo-lab paper: findings='{bad}' is not allowed: valid YAML"), lines
    assert sorted(p.name for p in here.iterdir()) == ["findings.yaml"]


RANK_SCRIPT = """
import json, os, psutil, torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
ips = lambda p: [c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
mine = {"rank": dist.get_rank(), "master": os.environ["MASTER_ADDR"], "rank_ips": ips(psutil.Process()),
        "agent_ips": ips(psutil.Process(os.getppid()))}  # the parent: torchrun's agent
rows = [None, None]
dist.all_gather_object(rows, mine)
if dist.get_rank() == 0:
    print(json.dumps(rows), flush=True)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("how", ["--standalone", "endpoint"])
def test_the_torchrun_wrapper_binds_the_endpoints_address(tmp_path, how):
    """`python -m treepo_lab.train.torchrun`, as the README's several-node command (one node here): the
    rendezvous store on the endpoint's address, the bootstrap store on the node's address toward it."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = ["--standalone"] if how == "--standalone" else ["--nnodes", "1", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                                            "--rdzv-id", "t"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "treepo_lab.train.torchrun", *opts, "--nproc-per-node", "2",
                          "--monitor-interval", "0.5", str(script)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (rows,) = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert sorted(r["rank"] for r in rows) == [0, 1] and {r["master"] for r in rows} == {"127.0.0.1"}
    # the ranks' gloo sockets: loopback on one node; with an endpoint, the address of the host name (one interface)
    seen = [ip for r in rows for ip in r["agent_ips"] + (r["rank_ips"] if how == "--standalone" else [])]
    assert rows[0]["agent_ips"] and all(ipaddress.ip_address(ip) in LOOPBACK for ip in seen), seen
    assert all(not ipaddress.ip_address(ip).is_unspecified for r in rows for ip in r["rank_ips"]), rows
