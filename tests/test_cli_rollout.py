"""`treepo-lab rollout`: trees as JSON with the schema users and figures rely on."""
from __future__ import annotations

import json
import re

from test_trainer import FAST

from treepo_lab.cli import main
from treepo_lab.rollout.tree import trees_from_json


def test_rollout_writes_inspectable_trees(tmp_path, ws_cache, capsys):
    out = tmp_path / "trees.json"
    over = [o for o in FAST if o.startswith(("warmstart.", "sampler."))]
    assert main(["rollout", "n_prompts=2", f"out={out}", f"warmstart.cache_dir={ws_cache}", *over,
                 "sampler.temperature=0.9", "seed=3"]) == 0
    printed = capsys.readouterr().out
    # a short table (one row per tree), not every metric: both savings, each said against what
    lines = printed.splitlines()
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("wrote 2 trees")):]  # after the warm start
    assert re.match(r"\s+tree\s+leaves\s+right\s+accuracy\s+mean reward", lines[1])
    assert re.match(r"\s+0\s+4\s+\d\s+\d+\.\d%", lines[2]) and re.match(r"\s+1\s+4\s", lines[3])
    assert re.search(r"token saving: -?\d+\.\d% vs independent sampling, -?\d+\.\d% vs the sequential sampler", printed)
    assert len(lines) <= 8 and "rollout/" not in printed
    raw = json.loads(out.read_text())
    assert len(raw) == 2
    for tree in raw:
        for node in tree["nodes"]:
            assert {"tokens", "text", "logprobs", "entropies", "finish_reason", "depth"} <= node.keys()
            assert len(node["tokens"]) == len(node["logprobs"]) == len(node["entropies"])
        assert len(tree["leaves"]) == 4
        for leaf in tree["leaves"]:
            assert leaf["node_path"] and leaf["full_ids"][: len(tree["prompt_ids"])] == tree["prompt_ids"]
            assert leaf["temperature"] == 0.9 and leaf["seed"] == 3 and leaf["model_path"]
            assert leaf["correct"] in (True, False)
    trees = trees_from_json(out)  # round trip
    assert [len(t.leaves) for t in trees] == [4, 4]


def test_eval_command_on_a_checkpoint(tmp_path, ws_cache, capsys):
    from test_trainer import make_cfg

    from treepo_lab.train.trainer import Trainer

    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=1"), run_dir=tmp_path / "run")
    trainer.fit(progress=False)
    over = [o for o in FAST if o.startswith(("warmstart.", "sampler.", "eval."))]
    assert main(["eval", f"checkpoint={tmp_path / 'run'}", f"warmstart.cache_dir={ws_cache}", *over,
                 "eval.k=4", "eval.temperature=1.0"]) == 0
    out = capsys.readouterr().out
    assert "step-000001/model" in out
    for key in ("eval/avg_at_4", "eval/pass_at_4", "eval/maj_at_4", "eval/decoded_tokens"):
        assert key in out
