"""The command line as a user meets it: --help everywhere, argument checks, hints that fit the error,
quiet output (and -v), the run summary, `treepo-lab ui`'s checks. Real commands, real MLflow store."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from test_trainer import FAST

from treepo_lab.cli import COMMANDS, main


def run_cli(args, capsys):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(name, flag, capsys):
    rc, out, err = run_cli([name, flag], capsys)
    assert rc == 0 and not err
    assert out.startswith(f"usage: treepo-lab {name}")
    assert "checkpoint found" not in out  # `resume --help` is help, not a checkpoint named --help


def test_top_level_help_lists_every_command(capsys):
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s+\S", out, flags=re.M), name
    assert run_cli(["help", "train"], capsys)[1].startswith("usage: treepo-lab train")


def test_list_rejects_arguments(capsys):
    rc, out, err = run_cli(["list", "experiment=grpo"], capsys)
    assert rc == 2 and not out
    assert "unexpected argument 'experiment=grpo'" in err and "usage: treepo-lab list" in err
    rc, out, _ = run_cli(["list"], capsys)
    assert rc == 0 and "treepo_more_init" in out


def test_a_default_follows_the_key_it_depends_on(capsys):
    """trainer.mini_batch_prompts defaults to null = trainer.prompts_per_step, so changing the latter
    alone is valid (it failed on mini_batch_prompts=8 before)."""
    rc, out, err = run_cli(["show", "trainer.prompts_per_step=2"], capsys)
    assert rc == 0, err
    assert "prompts_per_step: 2" in out and "mini_batch_prompts: null" in out
    rc, _, err = run_cli(["show", "trainer.prompts_per_step=6", "trainer.mini_batch_prompts=4"], capsys)
    assert rc == 2 and "a divisor of trainer.prompts_per_step=6" in err


@pytest.mark.parametrize("args, line, hint", [
    (["train", "experiment=nope"], "experiment='nope' is not allowed", "treepo-lab list names the experiments"),
    (["train", "trainer.foo=1"], "trainer.foo", "no such key"),
    (["train", "sampler.width=abc"], "could not be converted", "a value of the right type"),
    (["train", "sampler.width=["], "no viable alternative", "quote a value"),
    (["show", "sampler.branch=0"], "sampler.branch=0 is not allowed", "treepo_lab/rollout/config.py"),
    (["show", "trainer.lr=-1"], "trainer.lr=-1", "treepo_lab/train/config.py"),
    (["train", "--steps=3"], "unknown option '--steps=3'", "--help"),
    (["resume"], "needs a run id", "usage: treepo-lab resume"),
    (["resume", "/no/such/run"], "no treepo_lab checkpoint found", "runs/<run>/checkpoints/step-NNNNNN"),
    (["rollout", "n_prompts=0"], "n_prompts='0' is not allowed", "usage: treepo-lab rollout"),
    (["ui", "port=99999"], "port='99999' is not allowed", "treepo-lab ui port="),
])
def test_errors_print_one_line_and_a_hint_that_fits(args, line, hint, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2, err
    assert line in lines[0] and lines[0].startswith(f"treepo-lab {args[0]}: ")
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # nothing created


def test_unreachable_tracking_server_hint(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_free_port()}"
    rc, _, err = run_cli(["train", f"tracking.tracking_uri={uri}"], capsys)
    assert rc == 2 and "is not reachable" in err
    assert "hint: tracking.tracking_uri=sqlite:///mlflow.db logs to a local file; tracking.enabled=false" in err


def test_ui_refuses_a_busy_port_and_a_server_store(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = run_cli(["ui", f"port={port}"], capsys)
    assert rc == 2 and f"port {port} on 127.0.0.1 is in use" in err and f"port={port + 1}" in err
    rc, _, err = run_cli(["ui", "tracking.tracking_uri=http://example.org:5000"], capsys)
    assert rc == 2 and "serves the UI itself" in err


def _train(tmp_path, ws_cache, *extra):
    """`treepo-lab train` as a user runs it: a subprocess, output not a terminal."""
    over = [o for o in FAST if not o.startswith("tracking.")]
    cmd = [sys.executable, "-m", "treepo_lab.cli", *extra, "train", *over, f"warmstart.cache_dir={ws_cache}",
           "trainer.steps=1", "tracking.system_metrics=false", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HF_HUB_DISABLE_PROGRESS_BARS")}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, res.stderr


@pytest.mark.slow
def test_train_is_quiet_and_its_summary_says_where_things_are(tmp_path, ws_cache):
    out, err = _train(tmp_path, ws_cache)
    assert "INFO" not in err and "Loading weights" not in err and "Writing model shards" not in err, err
    assert len(re.findall(r"^train: ", err, flags=re.M)) == 1, err  # the final progress line, once
    assert re.search(r"^eval: 8 problems in \d+ s$", err, flags=re.M), err  # evaluation shows progress
    assert re.search(r"held-out accuracy: \d+\.\d% \(step 1\)", out)  # one number format: percentages
    assert re.search(r"token saving \d+\.\d% vs independent sampling", out)
    assert "MLflow experiment 'arith_d2-tiny', run default-s0-" in out
    assert re.search(r"open it: treepo-lab ui, then http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}", out)
    ckpt = re.search(r"^checkpoint: (\S+)$", out, flags=re.M)
    assert ckpt and (tmp_path / "runs").is_dir() and ckpt.group(1).endswith("checkpoints/step-000001")


@pytest.mark.slow
def test_verbose_brings_library_output_back(tmp_path, ws_cache):
    _, err = _train(tmp_path, ws_cache, "-v")
    assert "INFO mlflow" in err  # e.g. "Creating initial MLflow database tables..."
