"""The README's "compare strategies in the MLflow UI" steps, done in a real browser.

Real short training runs of three registry experiments (treepo_fixed_init with two seeds,
treepo_more_init, grpo) log to a temporary SQLite store; `treepo-lab ui` serves it; headless Chromium
(Debian's `chromium`, driven through playwright's protocol client, no browser download) opens the
experiment, groups the runs by the `treepo.strategy` tag and must find three groups holding exactly
the right runs, then switches to the chart view, where the `1_compare` section comes first with one
curve per strategy.

TREEPO_UI_SCREENSHOT=<path.png> also saves the grouped chart view there (the README's screenshot).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from test_trainer import FAST

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the [dev] extra is not installed
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright not installed (pip install -e '.[dev]')"),
]

# registry experiment, seeds; the runs keep the default 8x16 shape so answers fit in a response
RUNS = (("treepo_fixed_init", (0, 1)), ("treepo_more_init", (0,)), ("grpo", (0,)))
WANT_GROUPS = {"treepo": {"treepo_fixed_init-s0", "treepo_fixed_init-s1"}, "init2-8": {"treepo_more_init-s0"},
               "grpo": {"grpo-s0"}}
SHAPE_KEYS = ("sampler.max_depth", "sampler.segment_len", "sampler.fallback_block_size")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ws_cache):
    """A store holding real 2-step runs of three strategies (evaluated before and after)."""
    from treepo_lab.config import load_config
    from treepo_lab.train.run import run_experiment

    root = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{root}/mlflow.db"
    over = [o for o in FAST if not o.startswith(("tracking.", *SHAPE_KEYS))]
    cwd = os.getcwd()
    os.chdir(root)  # runs/ (checkpoints) in the temporary directory
    try:
        for name, seeds in RUNS:
            for seed in seeds:
                cfg = load_config(name, over + [f"warmstart.cache_dir={ws_cache}", f"tracking.tracking_uri={uri}",
                                                "tracking.system_metrics=false", "trainer.steps=2",
                                                "trainer.eval_before=true", f"seed={seed}"])
                run_experiment(cfg, progress=False)
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("arith_d2-tiny")
    return uri, exp.experiment_id


@pytest.fixture(scope="module")
def ui(store, tmp_path_factory):
    """`treepo-lab ui` on the store, as a user starts it; yields the URL it prints."""
    uri, _ = store
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    cmd = [sys.executable, "-m", "treepo_lab.cli", "ui", f"port={_free_port()}", f"tracking.tracking_uri={uri}"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            line = proc.stdout.readline()  # blocks until the server answers (or the command fails)
            match = re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+)", line)
            assert match, f"treepo-lab ui printed {line!r}; log: {log.read_text()[-2000:]}"
            yield match.group(1)
        finally:
            proc.send_signal(signal.SIGTERM)  # the command stops its server on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _groups(page) -> dict[str, set[str]]:
    """Group label -> the run names listed under it, read from the runs table in display order."""
    lines = [ln.strip() for ln in page.inner_text("body").splitlines() if ln.strip()]
    groups: dict[str, set[str]] = {}
    current = None
    for ln in lines:
        if ln.startswith("Group: "):
            current = ln[len("Group: "):]
            groups[current] = set()
        elif current is not None and re.fullmatch(r"[a-z0-9_]+-s\d+-\d{4}-\d{6}", ln):
            groups[current].add(ln.rsplit("-", 2)[0])  # treepo_fixed_init-s0-1201-203546 -> treepo_fixed_init-s0
    return groups


def test_group_by_strategy_in_the_mlflow_ui(store, ui, tmp_path):
    _, exp_id = store
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # 1. open the experiment: a model-training experiment (tag mlflow.experimentKind), not GenAI
            page.goto(f"{ui}/#/experiments/{exp_id}/runs", timeout=120_000)
            page.get_by_text("Training runs").first.wait_for(timeout=120_000)
            close = page.get_by_role("button", name="Close")  # MLflow's assistant panel opens by default
            if close.count():
                close.first.click()
            page.get_by_text("treepo_fixed_init-s0-", exact=False).first.wait_for(timeout=60_000)
            # 2. Group by -> tag treepo.strategy
            page.get_by_role("button", name="Group by").click()
            page.get_by_placeholder("Search").last.fill("treepo.strategy")
            page.get_by_text("treepo.strategy", exact=True).last.click()
            page.keyboard.press("Escape")
            page.get_by_text("Group: grpo").first.wait_for(timeout=30_000)
            # 3. three groups, each with the right runs
            assert _groups(page) == WANT_GROUPS
            # 4. the chart view: the 1_compare section first, one curve per strategy
            page.locator("label:has(input[value=CHART])").click()
            page.get_by_text("1_compare/eval_accuracy").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            sections = re.findall(r"^([0-9a-z_/]+)\n\(\d+\)$", text, flags=re.M)
            assert sections and sections[0] == "1_compare", sections
            page.wait_for_timeout(1500)  # let the charts finish drawing
            # one curve per strategy in the accuracy chart: its legend names each group (textContent: the
            # legend box cuts entries visually)
            legend = page.evaluate("document.body.textContent")
            for label in WANT_GROUPS:
                assert f"{label} (1_compare/eval_accuracy)" in legend, label
            shot = Path(os.environ.get("TREEPO_UI_SCREENSHOT") or tmp_path / "grouped_chart.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
