"""Every bad input is refused before anything is created: one line, exit 2, no MLflow run, no run folder.

`preflight` is tested directly (fast, one check at a time) and through `treepo-lab train` in-process
(`cli.main`), reading the real SQLite MLflow store back to show that no run exists.
"""
from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from transformers import LlamaConfig

from treepo_lab.cli import main
from treepo_lab.config import load_config
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.overrides import check_override_keys
from treepo_lab.registry import ConfigError
from treepo_lab.train.preflight import preflight


def _rows(n=12, answer=lambda i: str(2 * i)):
    return [{"question": f"What is {i}+{i}?", "answer": answer(i)} for i in range(1, n + 1)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def data(tmp_path):
    return _jsonl(tmp_path / "data.jsonl", _rows())


@pytest.fixture()
def model_dir(tmp_path):
    """A Hugging Face model directory (config + tokenizer; the preflight never reads weights)."""
    d = tmp_path / "model"
    LlamaConfig(vocab_size=104, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=200).save_pretrained(d)
    build_char_tokenizer().save_pretrained(d)
    return d


def _refused(overrides, key):
    with pytest.raises(ConfigError) as e:
        preflight(load_config("default", overrides))
    assert e.value.key == key, str(e.value)
    return str(e.value)


def test_a_good_config_passes_and_reports_the_longest_prompt(data):
    pf = preflight(load_config("default", ["task.name=file", f"task.path={data}"]))
    assert pf.max_positions == 512 and pf.longest_prompt == len("What is 12+12?") + 1  # + BOS
    assert pf.warnings == []


def test_seed_must_be_non_negative():
    assert "an integer >= 0" in _refused(["seed=-1"], "seed")
    _refused(["sampler.seed=-3"], "sampler.seed")


def test_unknown_tracking_scheme():
    msg = _refused(["tracking.tracking_uri=foo://bar"], "tracking.tracking_uri")
    assert "sqlite" in msg and "http" in msg


def test_sqlite_in_a_missing_folder(tmp_path):
    msg = _refused([f"tracking.tracking_uri=sqlite:///{tmp_path}/nope/mlflow.db"], "tracking.tracking_uri")
    assert "does not exist" in msg


def test_prompt_plus_response_beyond_the_embedded_models_positions():
    msg = _refused(["sampler.max_depth=32", "sampler.segment_len=16"], "sampler.max_depth")
    assert "512 positions" in msg and "32*16=512" in msg


def test_prompt_plus_response_beyond_a_hf_models_positions(model_dir, data):
    over = [f"model.path={model_dir}", "task.name=file", f"task.path={data}"]
    assert preflight(load_config("default", over)).max_positions == 200
    assert "200 positions" in _refused(over + ["sampler.max_depth=12"], "sampler.max_depth")


def test_overlong_buffer_at_least_the_response_length():
    _refused(["reward.overlong_buffer=128"], "reward.overlong_buffer")  # d*l = 8*16 = 128


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "no_tokenizer", "hub_id"])
def test_bad_model_paths_say_what_was_expected(tmp_path, kind, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no network retries in tests
    path = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "file": tmp_path / "model.safetensors",
            "no_tokenizer": tmp_path / "cfg_only", "hub_id": "no-such-org-xyz/no-such-model"}[kind]
    if kind == "empty":
        path.mkdir()
    if kind == "file":
        path.write_bytes(b"\0" * 8)
    if kind == "no_tokenizer":
        LlamaConfig().save_pretrained(path)
    msg = _refused([f"model.path={path}"], "model.path")
    assert "config.json and tokenizer files" in msg
    assert {"missing": "no such directory", "empty": "empty", "file": "a file", "no_tokenizer": "no tokenizer files",
            "hub_id": "not found locally"}[kind] in msg


def test_characters_outside_the_alphabet_are_named_with_their_rows(tmp_path):
    rows = _rows()
    rows[2]["question"] = "What is 3×3?"
    rows[6]["answer"] = "7 €"
    rows[8]["question"] = "Café: 9+9?"
    path = _jsonl(tmp_path / "odd.jsonl", rows)
    msg = _refused(["task.name=file", f"task.path={path}"], "task.path")
    assert "'×' in odd:3" in msg and "'€' in odd:7" in msg and "'é' in odd:9" in msg and "<unk>" in msg


def test_a_plus_key_the_schema_lacks_is_refused():
    assert "did you mean sampler.width" in _refused(["+sampler.widht=8"], "sampler.widht")


@pytest.mark.parametrize("override", ["sampler.widht=8", "+sampler.widht=8", "~sampler.widht"])
def test_override_keys_get_a_did_you_mean_and_never_a_plus(override):
    with pytest.raises(ConfigError) as e:
        from treepo_lab.config import ExperimentConfig

        check_override_keys(ExperimentConfig, [override])
    assert "did you mean sampler.width?" in str(e.value) and "+" not in str(e.value)


def test_free_form_and_real_keys_pass():
    from treepo_lab.config import ExperimentConfig

    check_override_keys(ExperimentConfig, ["sampler.width=8", "+tracking.tags.owner=alice", "task.check.compare=exact",
                                           "hydra.run.dir=x", "~sampler.seed"])


# ---- through the command line: exit 2, one line, nothing created ----------------------------------------

@pytest.fixture(autouse=True)
def _tripwire(monkeypatch):
    """A refused input never reaches the trainer; if one does, fail at once instead of training."""
    from treepo_lab.train import trainer

    def reached(*a, **k):
        raise AssertionError("training started: the input was not refused")

    monkeypatch.setattr(trainer.Trainer, "__init__", reached)


def _train(tmp_path, capsys, *overrides):
    db = tmp_path / "mlflow.db"
    base = [f"trainer.output_dir={tmp_path / 'runs'}", "tracking.system_metrics=false"]
    if not any(o.startswith("tracking.tracking_uri=") for o in overrides):
        base.append(f"tracking.tracking_uri=sqlite:///{db}")
    try:
        rc = main(["train", *base, *overrides])
    finally:
        mlflow.set_tracking_uri(None)
    err = capsys.readouterr().err.strip().splitlines()
    assert not (tmp_path / "runs").exists(), "a run folder was created"
    if db.exists():  # the store may exist (MLflow creates it on first use), but holds no run
        client = MlflowClient(f"sqlite:///{db}")
        ids = [e.experiment_id for e in client.search_experiments()]
        assert not ids or not client.search_runs(ids), "an MLflow run was created"
    return rc, err


BAD_FILES = {
    "truncated.jsonl": (b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "ans', "row 2: invalid JSON"),
    "noanswer.jsonl": (b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n', "row 2, column 'answer': missing"),
    "empty.jsonl": (b"", "the dataset has no rows"),
    "latin1.jsonl": ('{"question": "caf\xe9", "answer": "1"}\n'.encode("latin-1"), "not UTF-8 text"),
    "semicolon.csv": (b"question;answer\n1+1?;2\n2+2?;4\n", "comma-separated"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_cli_refuses_bad_datasets_before_any_run(tmp_path, capsys, name):
    content, expected = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    rc, err = _train(tmp_path, capsys, "task.name=file", f"task.path={tmp_path / name}")
    assert rc == 2 and len(err) == 2 and expected in err[0] and err[1].startswith("hint:"), err


@pytest.mark.parametrize("overrides, expected", [
    (["seed=-1"], "seed=-1 is not allowed: an integer >= 0"),
    (["tracking.tracking_uri=foo://bar"], "tracking.tracking_uri='foo://bar' is not allowed"),
    (["model.path=./no/such/model"], "no such directory"),
    (["sampler.max_depth=32"], "within the model's 512 positions"),
    (["reward.overlong_buffer=128"], "reward.overlong_buffer=128"),
    (["+sampler.widht=8"], "did you mean sampler.width?"),
    (["sampler.widht=8"], "did you mean sampler.width?"),
    (["task.check.compare=fuzzy"], "task.check.compare='fuzzy' is not allowed: one of exact, math_verify, numeric, python"),
    (["task.check.compare=python", "task.check.function=no_such_mod_xyz:f"], "task.check.function="),
    (["engine.hf_decode=fast"], "engine.hf_decode='fast' is not allowed: one of lean, model"),
])
def test_cli_refuses_bad_values_before_any_run(tmp_path, capsys, overrides, expected):
    rc, err = _train(tmp_path, capsys, *overrides)
    assert rc == 2 and len(err) == 2 and expected in err[0], err
    assert "+sampler" not in err[0]  # never the advice to add the misspelt key


# ---- real models: GGUF files, chat templates, bfloat16 -------------------------------------------------

def _gguf_without_tensors(path, arch):
    gguf = pytest.importorskip("gguf", reason="the [real] extra (gguf) is not installed")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case, expected", [
    ("text.gguf", "this is not a GGUF file"),
    ("no_tensors.gguf", "without tensors (not a model)"),
    ("unknown_arch.gguf", "a GGUF 'nonesuch' model; transformers loads llama"),
])
def test_cli_refuses_gguf_files_that_are_not_models(tmp_path, capsys, monkeypatch, case, expected):
    monkeypatch.setenv("TREEPO_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / case
    if case == "text.gguf":
        path.write_text("not a model\n")
    else:
        _gguf_without_tensors(path, "llama" if case == "no_tensors.gguf" else "nonesuch")
    rc, err = _train(tmp_path, capsys, f"model.path={path}")
    assert rc == 2 and len(err) == 2 and f"model.path='{path}' is not allowed: a GGUF model file" in err[0], err
    assert expected in err[0], err
    assert not list((tmp_path / "cache").glob("gguf/*/*")), "a conversion was written"


def test_cli_refuses_a_chat_template_the_tokenizer_lacks(tmp_path, capsys):
    rc, err = _train(tmp_path, capsys, "task.chat_template=true")
    assert rc == 2 and "task.chat_template=True is not allowed: false, null or a template file: the tokenizer of the embedded " \
                      "model has no chat template" in err[0], err


def test_cli_refuses_bfloat16_on_a_cpu_without_it(tmp_path, capsys, monkeypatch):
    from treepo_lab.models import load

    # the one way to be on such a CPU here: the hardware probe answers no
    monkeypatch.setattr(load, "cpu_has_bf16", lambda: False)
    rc, err = _train(tmp_path, capsys, "model.dtype=bfloat16", "model.device=cpu")
    assert rc == 2 and "model.dtype='bfloat16' is not allowed: float32" in err[0] and "no native bfloat16" in err[0], err
