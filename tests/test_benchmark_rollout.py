"""benchmarks/rollout.py end to end in its --smoke mode (a random tiny model, a few seconds).

It runs as a subprocess, the way users run it: argument parsing, the JSON it writes and its exit
codes are what is checked; the numbers themselves are benchmark results, not test assertions.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout.py"
HEADLINE = ("tree_vs_sequential_token_ratio", "tree_vs_sequential_wall_ratio", "tree_vs_generate_wall_ratio",
            "recompute_ratio", "overhead_share")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True,
                          text=True, timeout=timeout)


def check_result(out: Path, engines: set[str]) -> dict:
    result = json.loads(out.read_text())
    for key in HEADLINE:
        assert isinstance(result[key], float) and result[key] > 0, key
    rows = result["rows"]
    assert {r["engine"] for r in rows} == engines
    assert {r["kind"] for r in rows} == {"tree", "sequential", "generate"}
    assert result["best_row"] in {r["name"] for r in rows if r["kind"] == "tree" and r["b"] == 2}
    assert all(r["n_traj"] == 2 * 4 for r in rows)  # smoke: 2 prompts x w=4, every sampler fills them
    assert set(result["targets"]) and all(t["pass"] in (True, False) for t in result["targets"].values())
    return result


def test_smoke_hf(tmp_path):
    out = tmp_path / "rollout.json"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_result(out, {"hf"})
    assert "PASS" in proc.stdout or "MISS" in proc.stdout


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")
def test_smoke_vllm(tmp_path):
    out = tmp_path / "rollout.json"
    proc = run("--smoke", "--engine", "vllm", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = check_result(out, {"hf", "vllm"})
    assert result["best_row"].startswith("vllm tree")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_mode_without_cuda_fails_clearly(tmp_path):
    proc = run("--mode", "gpu", "--model", str(tmp_path), "--out", str(tmp_path / "x.json"))
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_grid_must_keep_the_budget():
    proc = run("--smoke", "--grid", "4x8,2x8")
    assert proc.returncode == 2 and "same product" in proc.stderr
