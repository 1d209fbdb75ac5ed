"""benchmarks/rollout.py end to end in its --smoke mode (a random tiny model, a few seconds).

It runs as a subprocess, the way users run it: argument parsing, the JSON it writes and its exit
codes are what is checked; the numbers themselves are benchmark results, not test assertions. What is
asserted is that the report is right about them: each ratio is recomputed from its rows, and each
target's verdict (JSON and printed) agrees with its own value and limit, whichever way it goes.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rollout_report  # noqa: E402

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
    best = next(r for r in rows if r["name"] == result["best_row"])
    ref = next(r for r in rows if r["name"] == best["seq_ref"])
    assert result["tree_vs_sequential_token_ratio"] == pytest.approx(best["processed"] / ref["processed"])
    assert result["tree_vs_sequential_wall_ratio"] == pytest.approx(best["wall_s"] / ref["wall_s"])
    assert set(result["targets"]) == set(rollout_report.targets(best))
    for name, t in result["targets"].items():
        assert t["pass"] == (t["value"] <= t["limit"]), name
    return result


def printed_verdicts(stdout: str) -> dict[str, str]:
    """target name -> PASS / MISS as first printed (the headline block; lines '  PASS <name>: <value> (limit <x>)')."""
    out = {}
    for line in stdout.splitlines():
        words = line.strip().split(" ", 1)
        if words[0] in ("PASS", "MISS") and len(words) == 2:
            out.setdefault(words[1].rsplit(":", 1)[0], words[0])
    return out


def test_targets_pass_at_the_limit_and_miss_above_it():
    row = {"tok_vs_seq": 0.6, "wall_vs_seq": 0.7, "wall_vs_generate": 0.51, "recompute_ratio": 1.0,
           "overhead_share": None}
    t = rollout_report.targets(row)
    assert t["tree tokens <= 0.6x sequential"]["pass"] is True
    assert t["tree wall <= (token ratio + 0.1)x sequential"]["pass"] is True  # 0.7 <= 0.6 + 0.1
    assert t["tree wall <= 0.5x generate(num_return_sequences=w)"]["pass"] is False
    assert t["overhead share <= 15%"]["pass"] is None  # not measured: neither verdict
    worse = rollout_report.targets({**row, "tok_vs_seq": 0.61, "wall_vs_seq": 0.72})
    assert worse["tree tokens <= 0.6x sequential"]["pass"] is False
    assert worse["tree wall <= (token ratio + 0.1)x sequential"]["pass"] is False


def test_forward_split_solves_both_rows():
    # fixed cost per call + cost per token that reproduce the forward time of both rows
    tree = {"forward_s": 0.45, "forward_calls": 65, "processed": 3480}
    seq = {"forward_s": 0.83, "forward_calls": 65, "processed": 7831}
    fs = rollout_report.forward_split(tree, seq)
    for r in (tree, seq):
        model = r["forward_calls"] * fs["fixed_ms_per_call"] / 1e3 + r["processed"] * fs["forward_us_per_token"] / 1e6
        assert model == pytest.approx(r["forward_s"])
    assert fs["forward_vs_seq"] == pytest.approx(0.45 / 0.83)
    same = rollout_report.forward_split(tree, dict(tree))  # equal token counts: no split
    assert same["fixed_ms_per_call"] is None and same["forward_us_per_token"] is None


def test_smoke_hf(tmp_path):
    out = tmp_path / "rollout.json"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = check_result(out, {"hf"})
    printed = printed_verdicts(proc.stdout)
    headline = {k: ("PASS" if t["pass"] else "MISS") for k, t in result["targets"].items()}
    assert headline.items() <= printed.items(), (headline, printed)


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
