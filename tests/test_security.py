"""Security defaults (issue 13 item 5), each checked on the real thing: the MLflow server the project starts
listens on 127.0.0.1 only; nothing the project reads is unpickled (checkpoints are safetensors + JSON, and
no code path calls a pickle loader); a model directory's own code never runs unless trust_remote_code is on."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import psutil
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from treepo_lab.config import load_config
from treepo_lab.models.config import ModelConfig
from treepo_lab.models.load import load_model_and_tokenizer
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.registry import ConfigError
from treepo_lab.train.checkpoint import save_checkpoint
from treepo_lab.train.preflight import preflight

PACKAGE = Path(__file__).resolve().parent.parent / "treepo_lab"
PICKLE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_code_path_unpickles():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else \
                [node.module.split(".")[0]] if isinstance(node, ast.ImportFrom) and node.module else []
            found += [f"{path.name}: import {n}" for n in names if n in PICKLE_MODULES]
        for call, name in _calls(tree):
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name.endswith("torch.load") and kw.get("weights_only") != "True":
                found.append(f"{path.name}: {name} without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and kw.get("allow_pickle") == "True":
                found.append(f"{path.name}: {name}(allow_pickle=True)")
            if name.endswith(("read_pickle", "load_state_dict_from_url")):
                found.append(f"{path.name}: {name}")
    assert not found, found


def test_a_checkpoint_is_safetensors_and_json_only(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=104, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=64))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = save_checkpoint(tmp_path, 1, model, build_char_tokenizer(), opt, sched, {"run_id": None})
    files = [p for p in path.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files), files
    for p in files:  # no pickle stream (protocol 2+ opcode) and no torch zip archive inside
        head = p.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"), p


def _remote_code_dir(tmp_path, model_type):
    """A model directory whose config asks for its own Python code; the code leaves a marker if it runs."""
    d = tmp_path / f"remote_{model_type}"
    LlamaForCausalLM(LlamaConfig(vocab_size=104, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).save_pretrained(d)
    build_char_tokenizer().save_pretrained(d)
    marker = d / "code_ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                               "from transformers import LlamaConfig\n"
                               f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig"})
    (d / "config.json").write_text(json.dumps(cfg))
    return d, marker


def test_trust_remote_code_is_off_by_default(tmp_path):
    assert ModelConfig().trust_remote_code is False
    assert load_config("default").model.trust_remote_code is False
    # a known architecture that also ships code: the library's own class is used, the code never runs
    d, marker = _remote_code_dir(tmp_path, "llama")
    preflight(load_config("default", [f"model.path={d}"]))
    load_model_and_tokenizer(d)
    assert not marker.exists(), "the model directory's own code ran"
    # an architecture only its own code knows: refused before any run exists, the code never runs
    d, marker = _remote_code_dir(tmp_path, "evil_arch")
    with pytest.raises(ConfigError, match="model.path.*trust_remote_code"):
        preflight(load_config("default", [f"model.path={d}"]))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_and_tokenizer(d)
    assert not marker.exists(), "the model directory's own code ran"
    # the control: with trust_remote_code=true the same directory's code does run (the test can fail)
    from transformers import AutoConfig

    AutoConfig.from_pretrained(d, trust_remote_code=True)
    assert marker.exists()


def test_the_mlflow_server_binds_127_0_0_1_only(tmp_path):
    from treepo_lab.track.ui import server_command, start_ui, stop_ui

    cmd = server_command(f"sqlite:///{tmp_path}/ui.db", 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, url = start_ui(f"sqlite:///{tmp_path}/ui.db", port)
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening = {c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening
    finally:
        stop_ui(proc)
