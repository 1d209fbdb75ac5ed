"""benchmarks/packing.py end to end in its --smoke mode (a random tiny model, a few seconds).

Run as a subprocess, as users run it. The numbers are benchmark results, not test assertions; what is
checked is that the report is consistent with itself: every ratio is recomputed from the row's own
tree and flat medians, the top-level keys are the headline row's, and the gradients of the two
update paths agree to float32 precision (a wrong gather or mask shows far above 1e-4).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "packing.py"
HEADLINE = ("forwarded_token_ratio", "update_wall_ratio", "peak_memory_ratio", "max_rel_grad_diff")


def test_smoke_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "packing.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert {r["kind"] for r in rows.values()} == {"tree", "grpo"}
    head = rows[result["headline_row"]]
    for key in HEADLINE:
        assert result[key] == head[key], key
    for r in rows.values():
        t, f = r["tree"], r["flat"]
        assert r["forwarded_token_ratio"] == t["forwarded"] / f["forwarded_unpadded"]
        assert r["update_wall_ratio"] == t["wall_s"] / f["wall_s"]
        assert 0 < r["forwarded_token_ratio"] < 1  # the prompt at least is shared
        assert r["max_rel_grad_diff"] < 1e-4
    assert "load_average" in result and "forwarded tokens" in proc.stdout
