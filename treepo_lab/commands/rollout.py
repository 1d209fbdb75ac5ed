"""`treepo-lab rollout`: sample trees with the config's sampler, score them as training would, write them as
JSON and print one row per tree with the compute of the call."""
from __future__ import annotations

from treepo_lab.commands.base import Command, load, setup
from treepo_lab.commands.output import UserError
from treepo_lab.train.progress import fmt

USAGE = "treepo-lab rollout [n_prompts=4] [out=trees.json] [checkpoint=...] [key=value ...]"


def run(own, overrides, raw):
    import numpy as np

    from treepo_lab.algo.reward import score_leaves
    from treepo_lab.algo.scoring import Scorer
    from treepo_lab.rollout.sampler import build_sampler
    from treepo_lab.rollout.tree import trees_to_json
    from treepo_lab.train.progress import setup_step

    cfg = load(own, overrides)
    try:
        n = int(own.get("n_prompts", 4))
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"n_prompts={own.get('n_prompts')!r} is not allowed: an integer >= 1", f"usage: {USAGE}")
    s = setup(own, cfg)
    problems = [s.prompts.problem(p) for p in s.task.sample(n, np.random.default_rng(cfg.seed))]
    sampler = build_sampler(cfg.sampler, s.engine, s.decode, s.tokenizer.eos_token_id)
    with setup_step(f"sampling {n} trees"):
        result = sampler.rollout([s.prompts.encode(p.prompt) for p in problems], seed=cfg.seed)
    with Scorer(s.task, s.decode, cfg.trainer.reward_timeout_s) as scorer:  # the reward training would give
        score_leaves(result.trees, problems, scorer, cfg.reward, cfg.sampler.max_response_len)
    for tree in result.trees:
        tree.meta.update({"model_path": s.model_dir, "temperature": cfg.sampler.temperature,
                          "top_p": cfg.sampler.top_p, "top_k": cfg.sampler.top_k, "seed": cfg.seed})
    out = own.get("out", "trees.json")
    trees_to_json(result.trees, out)
    print_rollout(result, out)


def print_rollout(result, out) -> None:
    """One row per tree, then the compute of the whole call (both savings, each said against what)."""
    print(f"wrote {len(result.trees)} trees to {out}")
    rows = [("tree", "leaves", "right", "accuracy", "mean reward", "mean length", "max depth")]
    for i, t in enumerate(result.trees):
        n = len(t.leaves)
        right = sum(bool(lf.correct) for lf in t.leaves)
        rewards = [lf.reward for lf in t.leaves if lf.reward is not None]
        lengths = [sum(t.segment_lengths(lf)) for lf in t.leaves]
        rows.append((str(i), str(n), str(right), fmt("accuracy", right / n if n else 0.0),
                     fmt("reward", sum(rewards) / len(rewards)) if rewards else "n/a",
                     fmt("length", sum(lengths) / n if n else 0.0),
                     str(max((len(lf.node_path) for lf in t.leaves), default=0))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths)))
    m = result.metrics()
    print(f"tokens: {fmt('tokens', m['rollout/decoded_tokens'])} decoded + {fmt('tokens', m['rollout/prefill_tokens'])} "
          f"prefilled for {fmt('tokens', m['rollout/generated_tokens'])} response tokens")
    line = f"token saving: {fmt('token_saving', m['rollout/token_saving'])} vs independent sampling"
    if "rollout/token_saving_vs_sequential" in m:
        line += f", {fmt('token_saving', m['rollout/token_saving_vs_sequential'])} vs the sequential sampler"
    print(line)


COMMAND = Command(run, "sample trees, write them as JSON, print a short table", USAGE,
                  "e.g. treepo-lab rollout n_prompts=4 out=trees.json sampler.width=8",
                  own=("experiment", "checkpoint", "out", "n_prompts"))
