"""`treepo-lab ui`: MLflow's own UI server on the project's store, sized for a laptop.

`mlflow server` defaults to 4 uvicorn workers and starts a job runner with half a dozen huey
consumers; on 2 cores one worker and no job runner serve the UI as fast and start in half the time.
It binds 127.0.0.1 only (the store has no authentication). No mlflow import here: the server is a
subprocess, and this module is what tests start too.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


class UIError(RuntimeError):
    """The UI cannot start (port in use, server exited)."""


def server_command(uri: str, port: int, verbose: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
           "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        # experiments made from the UI keep their artifacts beside the database, as ours do
        db_dir = Path(uri[len("sqlite:///"):]).parent
        cmd += ["--default-artifact-root", (db_dir / "mlartifacts").as_uri()]
    if not verbose:
        cmd += ["--uvicorn-opts", "--log-level warning"]
    return cmd


def server_env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server serves --backend-store-uri, nothing else
    return env


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # as uvicorn binds: connections of a server stopped a moment ago (TIME_WAIT) do not block the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"the MLflow server exited with status {proc.returncode} (run with -v for its log)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise UIError(f"the MLflow server at {url} did not answer within {timeout_s:.0f} s")


def start_ui(uri: str, port: int, verbose: bool = False, log=None) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process group and wait until it answers; returns (process, URL)."""
    if uri.startswith(("http://", "https://")):
        raise UIError(f"the store is a tracking server ({uri}): it serves the UI itself, open {uri}")
    if not port_free(port):
        raise UIError(f"port {port} on {HOST} is in use; choose another: treepo-lab ui port={port + 1}")
    url = f"http://{HOST}:{port}"
    out = log if log is not None else (None if verbose else subprocess.DEVNULL)
    proc = subprocess.Popen(server_command(uri, port, verbose), env=server_env(), stdout=out,
                            stderr=subprocess.STDOUT if out is not None else None, start_new_session=True)
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_ui(proc)
        raise
    return proc, url


def stop_ui(proc: subprocess.Popen) -> None:
    """Stop the server and the uvicorn worker it spawned (its process group)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_ui(uri: str, port: int = 5000, verbose: bool = False) -> None:
    """Serve until Ctrl-C (or SIGTERM), printing the URL once it answers."""
    print(f"starting the MLflow UI on {uri} ...", file=sys.stderr, flush=True)
    proc, url = start_ui(uri, port, verbose)
    print(f"MLflow UI: {url}   (store {uri}; Ctrl-C stops it)", flush=True)
    prev = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, prev)
        stop_ui(proc)
