"""Compute accounting: the two savings, and the metrics of several rollout rounds of one step."""
from __future__ import annotations

import pytest
import torch
from scripted_engine import EOS, enc
from test_sampler_scripted import PROMPT, run

from treepo_lab.engines.hf import HFEngine
from treepo_lab.models.config import TinyModelConfig
from treepo_lab.models.tiny import build_tiny_model
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.rollout.accounting import CumulativeCompute, merge_stats, rollout_metrics
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.train.metrics import rollout_step_metrics

torch.set_num_threads(1)


def test_sequential_sampler_saves_nothing_against_itself():
    """On the HF engine the sequential sampler prefills each prompt once for its w responses: against
    independent sampling that looks like a saving, against the sequential sampler it is exactly 0."""
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok)
    engine = HFEngine(model.eval(), tok.eos_token_id, tok.pad_token_id)
    prompts = [tok(p)["input_ids"] for p in ("Compute 3+4. ", "What is 12*2? ")]
    metrics = {}
    for kind in ("sequential", "tree"):
        cfg = SamplerConfig(kind=kind, width=4, max_depth=3, segment_len=6)
        result = build_sampler(cfg, engine, tok.decode, tok.eos_token_id).rollout(prompts, seed=1)
        metrics[kind] = m = result.metrics()
        generated = sum(len(t.response_tokens(lf)) for t in result.trees for lf in t.leaves)
        sequential = sum(map(len, prompts)) + generated
        processed = m["rollout/decoded_tokens"] + m["rollout/prefill_tokens"]
        assert m["rollout/sequential_tokens"] == sequential
        assert m["rollout/token_saving_vs_sequential"] == pytest.approx(1 - processed / sequential)
        assert m["rollout/token_saving"] == pytest.approx(1 - processed / (4 * sum(map(len, prompts)) + generated))
    assert metrics["sequential"]["rollout/token_saving_vs_sequential"] == 0.0
    assert metrics["sequential"]["rollout/token_saving"] > 0.1  # the prompt prefill shared by the 4 copies
    assert metrics["tree"]["rollout/token_saving_vs_sequential"] > 0  # shared response segments


def test_rounds_are_accounted_from_summed_counts():
    """Two rollout calls of one step (DAPO resampling): every ratio from the sums, shapes over all trees."""
    a, _ = run(lambda r, c, i: "ab" if c < 3 else enc("c") + [EOS], width=4)  # a deep shared tree
    b, _ = run(lambda r, c, i: enc("x") + [EOS], prompts=(PROMPT, PROMPT + [32]), width=4)  # short, wide
    ma, mb = a.metrics(), b.metrics()
    m = rollout_step_metrics([a, b])
    assert m == rollout_metrics(a.trees + b.trees, merge_stats([a.stats, b.stats]))
    for k in ("rollout/decoded_tokens", "rollout/prefill_tokens", "rollout/generated_tokens", "rollout/n_traj",
              "rollout/unique_tree_tokens", "rollout/independent_tokens", "rollout/sequential_tokens",
              "rollout/steps", "rollout/forward_calls", "tree/fallback_count"):
        assert m[k] == ma[k] + mb[k], k
    processed = m["rollout/decoded_tokens"] + m["rollout/prefill_tokens"]
    assert m["rollout/recompute_ratio"] == pytest.approx(processed / m["rollout/unique_tree_tokens"])
    assert m["rollout/token_saving"] == pytest.approx(1 - processed / m["rollout/independent_tokens"])
    assert m["rollout/token_saving_vs_sequential"] == pytest.approx(1 - processed / m["rollout/sequential_tokens"])
    assert m["tree/response_length/mean"] == pytest.approx(m["rollout/generated_tokens"] / m["rollout/n_traj"])
    assert m["tree/leaves_per_prompt/mean"] == pytest.approx(m["rollout/n_traj"] / 3)
    assert m["tree/requests_per_step/mean"] == pytest.approx(
        (sum(a.stats.requests_per_step) + sum(b.stats.requests_per_step)) / m["rollout/steps"])
    assert ma["rollout/recompute_ratio"] != mb["rollout/recompute_ratio"]  # the rounds differ: the check can tell
    with pytest.raises(ValueError):
        merge_stats([])


def test_cumulative_savings():
    a, _ = run(lambda r, c, i: "ab" if c < 3 else enc("c") + [EOS], width=4)
    m = a.metrics()
    cum = CumulativeCompute()
    cum.add(m)
    total = cum.add(m)
    assert total["cumulative/rollout/sequential_tokens"] == 2 * m["rollout/sequential_tokens"]
    assert total["cumulative/rollout/token_saving_vs_sequential"] == pytest.approx(m["rollout/token_saving_vs_sequential"])
