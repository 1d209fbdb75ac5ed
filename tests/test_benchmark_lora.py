"""benchmarks/lora.py end to end in its --smoke mode (the embedded model, seconds), as users run it. The
numbers are results, not assertions; what is checked: both sides ran, the LoRA side trains only its adapters
(far fewer parameters than the full side), and every ratio is recomputed from the two rows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lora.py"


def test_smoke_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "lora.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    full, lora = result["full"], result["lora"]
    assert (full["lora_r"], lora["lora_r"]) == (0, 8) and full["steps"] == lora["steps"] == 1
    assert lora["trained_params"] < full["trained_params"] / 10
    for key, ratio in result["ratios"].items():
        assert abs(ratio - lora[key] / full[key]) < 1e-12, key
    assert "LoRA / full:" in proc.stdout
