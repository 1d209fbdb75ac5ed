"""Issue 28: bad inputs that slipped through, now refused in one line before any process, run, folder or
file exists: the eval sampler's own rules (eptree's width), the estimator/sampler conflict named before an
inherited knob, an override of the wrong type with what is allowed, model.device=cuda without a GPU, and a
torchrun world that does not divide the prompts (rank 0 says it once; our torchrun adds one line, no
traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_launch_safety import here  # noqa: F401 (fixture)
from test_trainer import FAST

from treepo_lab.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 2 and lines[1].startswith("hint:"), err
    return lines[0]


CASES = {
    "eval eptree width": (["eval.sampler=eptree", "eval.k=4", "eval.temperature=1.0"],
                          "eval.k=4 is not allowed: a multiple of 1 + rounds*forks*branches = 5 with eval.sampler=eptree"),
    "tree estimator, chain sampler": (["experiment=treerl", "sampler.kind=sequential"],
                                      "advantage.estimator='treerl' is not allowed: an estimator without tree structure"),
    "params as a list": (["sampler.params=[1,2]"], "sampler.params=[1,2] is not allowed: a mapping"),
    "steps as a word": (["trainer.steps=abc"], "trainer.steps=abc is not allowed: an integer"),
}


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_with_nothing_created(here,  # noqa: F811
                                                   capsys, command, case):
    overrides, line = CASES[case]
    assert line in _refused(capsys, [command, *FAST, *overrides])
    assert list(here.iterdir()) == []  # no run folder, no MLflow store, no warm start


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_names_the_device_and_what_is_there(here, capsys):  # noqa: F811
    assert "model.device='cuda' is not allowed: cpu or auto: no GPU is visible here" in _refused(
        capsys, ["train", *FAST, "model.device=cuda"])
    assert list(here.iterdir()) == []


def test_torchrun_ranks_refuse_once_without_a_traceback(here):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "treepo_lab.train.torchrun", "--standalone", "--nproc-per-node", "3",
                           "-m", "treepo_lab.cli", "train", "trainer.prompts_per_step=8"],
                          cwd=here, env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert [ln for ln in lines if ln.startswith("treepo-lab train:")] == [
        "treepo-lab train: WORLD_SIZE (torchrun --nnodes x --nproc-per-node)=3 is not allowed: a divisor of "
        "trainer.prompts_per_step=8 (each process samples the same number of prompts)"]
    assert "Traceback" not in done.stderr and len(lines) == 3, lines  # the line, its hint, torchrun's one line
    assert lines[-1].startswith("torchrun: rank ") and "exited with code 2" in lines[-1]
    assert list(here.iterdir()) == []
