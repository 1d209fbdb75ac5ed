"""`DRY_RUN=1 bash benchmarks/gpu_check.sh`: the GPU machine's sequence rehearsed on CPU, end to end.

It runs as users run it (a subprocess, its own OUTDIR): the wheels step (listed, not installed), the device,
a 2-step warm start, `pytest -m gpu` on CPU (tests/test_gpu.py with TREEPO_TEST_DEVICE=cpu: the only place
the GPU tests run in `make test`), rollout.py and packing.py in --smoke mode on CPU, and the summary table.
About 45 s on 2 idle cores (70 s under load): marked slow.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("device", "warm start", "gpu tests", "rollout", "packing")


@pytest.mark.slow
def test_dry_run_passes_every_check_and_prints_one_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TREEPO_TEST_DEVICE", "WHEELS", "BUDGET_S")}
    env |= {"DRY_RUN": "1", "PY": sys.executable, "OUTDIR": str(tmp_path / "out"), "WHEELS": str(tmp_path / "no_wheels")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout
    assert proc.returncode == 0, (out[-4000:], proc.stderr[-2000:])
    summary = out.split("==== gpu_check summary ====", 1)[1].splitlines()[1:]
    assert out.count("==== gpu_check summary ====") == 1
    assert summary[0].startswith("device: cpu (dry run) | torch ")
    assert summary[1].split() == ["check", "result", "time_s", "detail"]
    rows = {line[:12].strip(): line[12:].split() for line in summary[2:] if line.strip()}
    assert list(rows) == ["wheels", *CHECKS, "overall"]
    assert rows["wheels"][0] == "SKIP"  # a dry run lists the wheels, installs nothing
    for name in (*CHECKS, "overall"):
        assert rows[name][0] == "PASS", (name, summary)
    tests = re.fullmatch(r"(\d+) passed, 0 failed, 0 skipped on cpu", " ".join(rows["gpu tests"][2:]))
    assert tests and int(tests[1]) >= 6, rows["gpu tests"]
    assert "tree/seq tokens" in " ".join(rows["rollout"]) and "grad diff" in " ".join(rows["packing"])
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["overall"] == "PASS" and written["device"]["device"] == "cpu (dry run)"
    # what a GPU run brings back (the device tool returns at most 8 files)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "steps.tsv", "gpu_check.log", "gpu_tests.xml", "rollout.json", "packing.json", "summary.json"}
