"""Checkpoint writes that meet trouble (issue 28). A disk that fills up during one ends the run with one line
naming the folder (it was a safetensors traceback), the MLflow run FAILED with that line, the half-written
checkpoint removed and the last complete one intact; the disk is a real 32 MiB tmpfs (root only; skipped
elsewhere). A stop that arrives mid-write (torchrun's SIGTERM when another rank died, Ctrl-C) waits for the
checkpoint to be whole: one interrupted there left only a half-written .tmp, and nothing to resume from."""
from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_faults import _over, store  # noqa: F401 (fixture)
from transformers import LlamaConfig, LlamaForCausalLM

from treepo_lab.cli import main
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.preflight import check_checkpoint


@pytest.fixture()
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_during_a_checkpoint_is_one_line(store, ws_cache, small_disk, monkeypatch, capsys):  # noqa: F811
    real, saves = ckpt.save_checkpoint, []

    def fill_then_save(root, step, *args, **kwargs):
        saves.append(step)
        if len(saves) == 2:  # the disk fills up between the first checkpoint and the second
            _fill(small_disk)
        return real(root, step, *args, **kwargs)
    monkeypatch.setattr(ckpt, "save_checkpoint", fill_then_save)
    runs = small_disk / "runs"
    code = main(["train", "experiment=treepo_fixed_init", *_over(store, ws_cache, "trainer.steps=3", "trainer.save_every=1",
                                                                 f"trainer.output_dir={runs}", "tracking.run_name=full")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(("treepo-lab", "hint:", "Traceback", "  File"))]
    assert code == 2 and len(saves) == 2, err
    assert len(lines) == 2 and lines[1].startswith("hint:"), err  # one line and its hint, no traceback
    assert lines[0].startswith(f"treepo-lab train: could not write a checkpoint in {runs / 'full' / 'checkpoints'}: "
                               "no space left on device"), lines
    client = MlflowClient(store)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["treepo.error"]
    checkpoints = runs / "full" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000001"]  # no half-written one left
    check_checkpoint(ckpt.latest_checkpoint(checkpoints))  # whole: resume would load it


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=104, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=64))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    real = ckpt.save_file

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C half-way through the checkpoint
        return real(*args, **kwargs)
    monkeypatch.setattr(ckpt, "save_file", interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own Ctrl-C (conftest restores the one before)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 1, model, build_char_tokenizer(), opt, sched, {"run_id": None})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]
    check_checkpoint(tmp_path / "step-000001")
