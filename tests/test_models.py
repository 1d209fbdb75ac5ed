import json
import os

import pytest
import torch

from treepo_lab.config import load_config
from treepo_lab.models.config import ModelConfig, TinyModelConfig, WarmstartConfig
from treepo_lab.models.load import load_model_and_tokenizer, resolve_model
from treepo_lab.models.tiny import build_tiny_model, save_checkpoint
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.models.warmstart import MARKER, cache_key, warmstart
from treepo_lab.registry import ConfigError
from treepo_lab.tasks.config import TaskConfig

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=256)


def test_default_tiny_model_size():
    model = build_tiny_model(TinyModelConfig(), build_char_tokenizer())
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6


def test_build_is_seeded():
    tok = build_char_tokenizer()
    a, b = build_tiny_model(SMALL, tok), build_tiny_model(SMALL, tok)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_save_load_round_trip(tmp_path):
    tok = build_char_tokenizer()
    model = build_tiny_model(SMALL, tok).eval()
    save_checkpoint(model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path, dtype="float32", device="cpu")
    ids = torch.tensor([tok("Q: 1+2=?\n")["input_ids"]])
    assert loaded_tok("Q: 1+2=?\n")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_config_validation():
    with pytest.raises(ConfigError, match="model.dtype"):
        ModelConfig(dtype="fp8").validate()
    with pytest.raises(ConfigError, match="model.device"):
        ModelConfig(device="gpu").validate()
    with pytest.raises(ConfigError, match="num_heads"):
        TinyModelConfig(hidden_size=30, num_heads=4).validate()
    with pytest.raises(ConfigError, match="flaw_rate"):
        WarmstartConfig(flaw_rate=1.5).validate()
    with pytest.raises(ConfigError, match="warmstart.task.name"):  # a name rule: checked by treepo_lab/config.py
        load_config("default", ["warmstart.task.name=file", "warmstart.task.path=x.jsonl"])
    ModelConfig().validate()
    WarmstartConfig().validate()


def test_resolve_model_passes_a_path_through():
    assert resolve_model(ModelConfig(path="some/hub-id")) == "some/hub-id"


def _tiny_warmstart(tmp_path, **kw) -> WarmstartConfig:
    kw = {"task": TaskConfig(held_out_size=20), **kw}
    return WarmstartConfig(steps=2, batch_size=4, warmup_steps=1, tiny=SMALL, eval_size=0,
                           cache_dir=str(tmp_path / "cache"), **kw)


def test_warmstart_cache_key_and_atomic_write(tmp_path, monkeypatch):
    cfg = _tiny_warmstart(tmp_path)
    path = warmstart(cfg)
    assert path.name == cache_key(cfg) and (path / MARKER).is_file()
    assert json.loads((path / MARKER).read_text())["key"] == cache_key(cfg)
    assert (path / "model.safetensors").is_file()
    # no temp dir left behind (the entry's lock file stays: a later builder locks the same file)
    assert [p.name for p in path.parent.iterdir() if p.suffix != ".lock"] == [path.name]
    load_model_and_tokenizer(path, device="cpu")

    # Cached: the same config returns the same dir without training again.
    import treepo_lab.models.warmstart as ws

    monkeypatch.setattr(ws, "train", lambda cfg: pytest.fail("retrained a cached checkpoint"))
    assert warmstart(cfg) == path
    # The cache dir and eval settings are not part of the key; training settings are.
    assert cache_key(_tiny_warmstart(tmp_path / "elsewhere")) == cache_key(cfg)
    assert cache_key(_tiny_warmstart(tmp_path, flaw_rate=0.5)) != cache_key(cfg)
    assert cache_key(_tiny_warmstart(tmp_path, task=TaskConfig(difficulty=3, held_out_size=20))) != cache_key(cfg)
    # Evaluation-only task settings do not change the demonstrations, so not the key either.
    assert cache_key(_tiny_warmstart(tmp_path, task=TaskConfig(held_out_size=7, seed=3))) == cache_key(cfg)


def test_a_rank_above_0_waits_for_rank_0s_warm_start(tmp_path, monkeypatch):
    """transformers writes weights on rank 0 only: a rank 1 that won the builder's lock published an entry
    with a tokenizer and no model (every later run failed on it). A rank > 0 never builds: it waits."""
    import threading

    import treepo_lab.models.warmstart as ws

    cfg = _tiny_warmstart(tmp_path)
    monkeypatch.setattr(ws, "train", lambda cfg: pytest.fail("a rank > 0 built the warm start"))
    monkeypatch.setenv("RANK", "1")
    entry = tmp_path / "cache" / cache_key(cfg)

    def rank_0_publishes():
        entry.mkdir(parents=True)
        (entry / MARKER).write_text("{}")
    timer = threading.Timer(0.5, rank_0_publishes)
    timer.start()
    try:
        assert warmstart(cfg) == entry
    finally:
        timer.cancel()


def test_warmstart_ignores_an_entry_without_marker(tmp_path, monkeypatch):
    cfg = _tiny_warmstart(tmp_path)
    half = tmp_path / "cache" / cache_key(cfg)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{")  # a half-written entry
    path = warmstart(cfg)
    assert (path / MARKER).is_file() and (path / "model.safetensors").is_file()


def test_warmstart_failure_leaves_no_entry(tmp_path, monkeypatch):
    import treepo_lab.models.warmstart as ws

    def boom(cfg):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(ws, "train", boom)
    cfg = _tiny_warmstart(tmp_path)
    with pytest.raises(RuntimeError):
        warmstart(cfg)
    assert [n for n in os.listdir(tmp_path / "cache") if not n.endswith(".lock")] == []


def test_evaluation_helpers_run_on_an_untrained_model():
    from treepo_lab.models.warmstart import greedy_accuracy, mixed_fraction
    from treepo_lab.tasks.build import build_task

    tok = build_char_tokenizer()
    model = build_tiny_model(SMALL, tok).eval()
    task = build_task(TaskConfig(held_out_size=4))
    assert greedy_accuracy(model, tok, task, task.held_out(), batch=2, max_new_tokens=8) == 0.0
    mixed, acc = mixed_fraction(model, tok, task, task.held_out()[:2], n_samples=3, batch=4, max_new_tokens=8)
    assert (mixed, acc) == (0.0, 0.0)
