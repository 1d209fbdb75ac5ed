"""HF engine: KV forks are exact, broken forks are caught, seeding, EOS + compaction, counters.

Exactness is checked the only way that does not trust the engine: every path's returned log-probs
(and entropies) must equal a from-scratch recompute of its whole root-to-path sequence.
"""
from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from treepo_lab.engines import build_engine, draws, kv
from treepo_lab.engines.base import Engine, SamplingParams, SegmentRequest
from treepo_lab.engines.hf import HFEngine
from treepo_lab.engines.logprobs import sequence_stats

torch.set_num_threads(1)
EOS, PAD, VOCAB = 1, 0, 40
TOL = 1e-4
REAL_FORK = kv.fork_cache
REAL_BIAS = HFEngine._sibling_bias
REAL_MATERIALIZE = kv.materialize
SAMPLINGS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=8),
    SamplingParams(temperature=0.8, top_p=0.9),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        # a large init makes next-token distributions depend sharply on the context, so a wrong KV
        # row shows up far above the tolerance
        initializer_range=0.3,
    )
    return LlamaForCausalLM(cfg).eval()


def run_tree(engine, sampling, seed, calls=4, seg=5):
    """Random fork trees: each call continues a random subset of live paths with 1-3 children each
    and mixes in fresh prompts of different lengths (one of them a cut of an existing path).
    Returns {path_id: (prompt, tokens, logprobs, entropies)} over root-to-path sequences."""
    rng = random.Random(seed)
    paths, live, next_id = {}, [], 0
    for call in range(calls):
        reqs = []
        for pid in rng.sample(live, rng.randint(1, len(live))) if live else []:
            prompt, toks, _, _ = paths[pid]
            for _ in range(rng.randint(1, 3)):
                reqs.append(SegmentRequest(next_id, prompt + toks, parent_id=pid))
                next_id += 1
        fresh = [[rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 3))]
        if paths:  # a fallback-style restart: prefill a prefix of an existing sequence
            prompt, toks, _, _ = paths[rng.choice(sorted(paths))]
            full = prompt + toks
            fresh.append(full[: rng.randint(1, len(full))])
        fresh.append(rng.choice(fresh))  # identical contexts are prefilled once and forked
        for ctx in fresh:
            reqs.append(SegmentRequest(next_id, ctx))
            next_id += 1
        rng.shuffle(reqs)
        outs = engine.generate(reqs, seg, sampling, seed=seed * 100 + call)
        live = []
        for r, o in zip(reqs, outs):
            base = paths[r.parent_id] if r.parent_id is not None else (r.context, [], [], [])
            paths[r.path_id] = (base[0], base[1] + o.tokens, base[2] + o.logprobs, base[3] + o.entropies)
            if not o.eos:
                live.append(r.path_id)
    return paths


def recompute_error(model, paths, sampling) -> tuple[float, float]:
    """Max abs difference of (log-probs, entropies) between the engine and a from-scratch pass."""
    prompts, resps = zip(*[(p[0], p[1]) for p in paths.values()])
    with torch.no_grad():
        lps, ents = sequence_stats(model, prompts, resps, sampling, pad_token_id=PAD)
    lp_err = max((torch.tensor(p[2]) - lp).abs().max().item() for p, lp in zip(paths.values(), lps))
    ent_err = max((torch.tensor(p[3]) - e).abs().max().item() for p, e in zip(paths.values(), ents))
    return lp_err, ent_err


def assert_matches_recompute(model, paths, sampling):
    lp_err, ent_err = recompute_error(model, paths, sampling)
    assert lp_err < TOL and ent_err < TOL, f"engine vs recompute: logprob {lp_err:.2e}, entropy {ent_err:.2e}"


@pytest.mark.parametrize("lean", [True, False], ids=["lean-step", "model-forward"])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["t1", "t0.7-topk", "t0.8-topp"])
def test_forks_match_recompute(model, sampling, lean, monkeypatch):
    for seed in (1, 2):
        engine = HFEngine(model, EOS, PAD, lean_decode=lean)
        assert (engine._lean is not None) == lean
        grouped = []  # calls that ran sibling groups (and gave survivors rows of their own)

        def counted(*args, calls=grouped):
            calls.append(1)
            return REAL_MATERIALIZE(*args)

        monkeypatch.setattr(kv, "materialize", counted)
        paths = run_tree(engine, sampling, seed)
        assert grouped, "the random trees should have exercised sibling groups"
        assert len(paths) > 12
        assert_matches_recompute(model, paths, sampling)


def siblings_see_each_other(engine, mask, g, max_tokens):
    """A sibling mask that lets every slot of a group read all of its siblings' tokens."""
    bias = REAL_BIAS(engine, mask, g, max_tokens)
    bias[:, :, mask.shape[1]:] = 0
    return bias


def materialized_from_next_slot(cache, mask, flat, g, steps):
    """Survivors get their next sibling's decoded columns."""
    return REAL_MATERIALIZE(cache, mask, flat - flat % g + (flat + 1) % g, g, steps)[:2] + (
        torch.arange(len(flat)),)


def misrouted_fork(cache, rows):  # every child continues its neighbour's parent
    return REAL_FORK(cache, rows.roll(1))


@pytest.mark.parametrize("target, broken", [
    (kv, ("fork_cache", misrouted_fork)),
    (HFEngine, ("_sibling_bias", siblings_see_each_other)),
    (kv, ("materialize", materialized_from_next_slot)),
], ids=["misrouted", "siblings-see-each-other", "wrong-slot-materialized"])
def test_broken_fork_is_caught(model, monkeypatch, target, broken):
    """Each way a fork could go wrong (a child continuing another path, siblings reading each
    other's tokens within a call, a survivor handed a sibling's tokens) breaks the recompute."""
    sampling = SamplingParams(temperature=1.0)
    monkeypatch.setattr(target, *broken)
    paths = run_tree(HFEngine(model, EOS, PAD), sampling, seed=1)
    with pytest.raises(AssertionError):
        assert_matches_recompute(model, paths, sampling)


def test_append_layer_matches_dynamic_layer():
    # the in-place KV layer against transformers' own: appends, row selections (repeats, growth,
    # shrinking), dropped leading columns and headroom hints in random order
    rng = random.Random(0)
    torch.manual_seed(0)
    fast, ref = kv.AppendLayer(), DynamicLayer()
    rows = 5
    for _ in range(300):
        op = rng.random()
        if op < 0.5 or not ref.is_initialized:
            k = torch.randn(rows, 2, rng.randint(1, 3), 4)
            v = torch.randn(rows, 2, k.shape[2], 4)
            out = fast.update(k, v)
            ref.update(k, v)
            assert torch.equal(out[0], ref.keys) and torch.equal(out[1], ref.values)
        elif op < 0.75:
            if rng.random() < 0.5:
                idx = torch.tensor([rng.randrange(rows) for _ in range(rng.randint(1, rows + 2))])
            else:  # a growing fork: rows stay, new rows past them copy some (one gather in place)
                idx = torch.tensor(list(range(rows)) + [rng.randrange(rows) for _ in range(rng.randint(1, 3))])
            fast.batch_select_indices(idx)
            ref.batch_select_indices(idx)
            rows = len(idx)
        elif op < 0.9 and ref.keys.shape[2] > 1:
            cut = rng.randint(1, ref.keys.shape[2] - 1)
            fast.keys, fast.values = fast.keys[:, :, cut:], fast.values[:, :, cut:]
            ref.keys, ref.values = ref.keys[:, :, cut:], ref.values[:, :, cut:]
        else:
            fast.headroom = rng.choice([None, 0, 1, 5])
        assert torch.equal(fast.keys, ref.keys) and torch.equal(fast.values, ref.values)


@pytest.mark.parametrize("groups, flat", [
    (1, [0, 1]),  # one group: in place, where a reshape of its columns could alias the buffer
    (1, [2, 0, 1]),  # three survivors of one group: more rows than the buffer holds, new buffers
    (3, [0, 1, 2, 5, 4, 6]),  # in place, first children in their group rows, the others after them
], ids=["one-group", "new-buffers", "three-groups"])
def test_materialize_gives_each_child_its_context_and_its_own_columns(groups, flat):
    g, width, steps, heads, hd = 3, 5, 4, 2, 3
    torch.manual_seed(0)
    cache = kv.new_cache(g * steps)
    cache.update(torch.randn(groups, heads, width, hd), torch.randn(groups, heads, width, hd), 0)
    for _ in range(steps):  # one column per slot per step, as a sibling-group call appends them
        cache.update(torch.randn(groups, heads, g, hd), torch.randn(groups, heads, g, hd), 0)
    before = [cache.layers[0].keys.clone(), cache.layers[0].values.clone()]
    flat = torch.tensor(flat)
    mask = torch.ones(groups, width, dtype=torch.long)
    mask[0, :2] = 0
    cache, new_mask, order = kv.materialize(cache, mask, flat, g, steps)
    assert sorted(order.tolist()) == list(range(len(flat)))
    for row, c in enumerate(order.tolist()):
        r, j = divmod(int(flat[c]), g)
        for got, old in zip((cache.layers[0].keys, cache.layers[0].values), before):
            want = torch.cat([old[r, :, :width], old[r, :, width + j :: g]], dim=1)
            assert torch.equal(got[row], want), (row, c)
        assert new_mask[row].tolist() == mask[r].tolist() + [1] * steps


def test_seeded_generation_is_reproducible(model):
    reqs = [SegmentRequest(i, [2 + i, 5, 7][: i + 1]) for i in range(3)]
    sampling = SamplingParams(temperature=1.0)

    def tokens(seed):
        return [o.tokens for o in HFEngine(model, EOS, PAD).generate(reqs, 8, sampling, seed)]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def frequent_token(model) -> int:
    """The token this random model samples most often: used as EOS so that rows stop early."""
    engine = HFEngine(model, eos_token_id=-1, pad_token_id=PAD)  # -1: nothing stops
    outs = engine.generate([SegmentRequest(i, [2 + i]) for i in range(16)], 8, SamplingParams(), 0)
    return int(torch.tensor([t for o in outs for t in o.tokens]).bincount().argmax())


@pytest.mark.parametrize("siblings", [False, True], ids=["distinct-contexts", "sibling-groups"])
def test_eos_stops_rows_and_compaction_keeps_exactness(model, siblings):
    """Rows that sample EOS leave the batch at once. With distinct contexts every row is one
    path; with 5 shared contexts (groups of ~5 siblings) a group's row leaves once all of its
    children have ended, and the survivors are then materialized into rows of their own."""
    eos = frequent_token(model)
    engine = HFEngine(model, eos_token_id=eos, pad_token_id=PAD)
    sampling = SamplingParams(temperature=1.0)
    tokens = [t for t in range(2, VOCAB) if t != eos]
    # sibling groups need a shared context longer than what their extra columns cost (hf.py): 70
    shared = [tokens[j % len(tokens)] for j in range(70)] if siblings else []
    reqs = [SegmentRequest(i, shared + [c for c in range(2, 2 + 1 + i % 5) if c != eos]
                           + ([] if siblings else [tokens[i]])) for i in range(24)]
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: batch_sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        outs = engine.generate(reqs, 16, sampling, seed=3)
    finally:
        hook.remove()
    ended = [r for r, o in zip(reqs, outs) if o.eos]
    assert 3 <= len(ended) < len(outs) - 3, "the test needs some rows to stop early and some not"
    for o in outs:
        assert (o.tokens[-1] == eos) == o.eos and eos not in o.tokens[:-1]
        assert o.eos or len(o.tokens) == 16
    decode = batch_sizes[1:]  # after the one prefill forward
    assert len(decode) == 16 and decode == sorted(decode, reverse=True)
    if siblings:  # group rows: the 5 contexts
        assert decode[0] == 5
    else:  # each finished row left the batch at once
        assert decode[-1] == len(outs) - sum(len(o.tokens) < 16 for o in outs)
    paths = {r.path_id: (r.context, o.tokens, o.logprobs, o.entropies) for r, o in zip(reqs, outs)}
    assert_matches_recompute(model, paths, sampling)
    # an EOS-ended path is gone; the survivors (moved around by compaction) fork on exactly
    with pytest.raises(ValueError, match="not live"):
        engine.generate([SegmentRequest(100, ended[0].context + paths[ended[0].path_id][1], ended[0].path_id)], 4, sampling, 0)
    live = [r.path_id for r, o in zip(reqs, outs) if not o.eos]
    forks = [SegmentRequest(100 + k, paths[p][0] + paths[p][1], p) for k, p in enumerate(live * 2)]
    for r, o in zip(forks, engine.generate(forks, 6, sampling, seed=4)):
        base = paths[r.parent_id]
        paths[r.path_id] = (base[0], base[1] + o.tokens, base[2] + o.logprobs, base[3] + o.entropies)
    assert_matches_recompute(model, paths, sampling)


def test_counters_add_up(model):
    engine = HFEngine(model, EOS, PAD)
    sampling = SamplingParams(temperature=1.0)
    fresh = [SegmentRequest(0, [3, 4, 5, 6]), SegmentRequest(1, [7]), SegmentRequest(2, [8, 9])]
    outs = engine.generate(fresh, 6, sampling, seed=0)
    c = engine.counters
    assert c.prefill_tokens == 4 + 1 + 2  # every context token of a prefilled request
    assert c.decoded_tokens == sum(len(o.tokens) for o in outs)
    assert c.forward_calls == 1 + max(len(o.tokens) for o in outs)  # one prefill + decode steps
    assert c.forward_s > 0
    before = c.snapshot()
    live = [(r, o) for r, o in zip(fresh, outs) if not o.eos]
    forks = [SegmentRequest(10 + k, r.context + o.tokens, r.path_id) for k, (r, o) in enumerate(live * 2)]
    outs2 = engine.generate(forks, 6, sampling, seed=1)
    d = engine.counters.since(before)
    assert d.prefill_tokens == 0  # forks reuse the parent's KV
    assert d.decoded_tokens == sum(len(o.tokens) for o in outs2)
    assert d.forward_calls == max(len(o.tokens) for o in outs2)  # no prefill forward
    # identical fresh contexts are prefilled once; their copies still sample independently
    before = engine.counters.snapshot()
    dup = [SegmentRequest(30 + k, [3, 4, 5, 6]) for k in range(4)] + [SegmentRequest(40, [7, 8])]
    outs3 = engine.generate(dup, 6, sampling, seed=2)
    assert engine.counters.since(before).prefill_tokens == 4 + 2
    assert len({tuple(o.tokens) for o in outs3[:4]}) > 1


def test_one_token_contexts_and_forks_in_one_call(model):
    # fresh contexts of one token have nothing to prefill (their token is pending), alone or mixed
    engine = HFEngine(model, EOS, PAD)
    sampling = SamplingParams(temperature=0.7, top_k=8)
    reqs = [SegmentRequest(0, [5]), SegmentRequest(1, [6])]
    outs = engine.generate(reqs, 4, sampling, seed=0)
    assert engine.counters.prefill_tokens == 2 and engine.counters.forward_calls == max(len(o.tokens) for o in outs)
    paths = {r.path_id: (r.context, o.tokens, o.logprobs, o.entropies) for r, o in zip(reqs, outs)}
    live = [p for p, o in zip(paths, outs) if not o.eos]
    assert live
    reqs = [SegmentRequest(10 + k, paths[p][0] + paths[p][1], p) for k, p in enumerate(live * 2)]
    reqs += [SegmentRequest(20, [7]), SegmentRequest(21, [8])]
    outs = engine.generate(reqs, 4, sampling, seed=1)
    for r, o in zip(reqs, outs):
        base = paths[r.parent_id] if r.parent_id is not None else (r.context, [], [], [])
        paths[r.path_id] = (base[0], base[1] + o.tokens, base[2] + o.logprobs, base[3] + o.entropies)
    assert engine.counters.prefill_tokens == 4
    assert_matches_recompute(model, paths, sampling)


def test_release_and_load_weights(model):
    engine = HFEngine(model, EOS, PAD)
    sampling = SamplingParams(temperature=1.0)
    reqs = [SegmentRequest(i, [2 + i, 3]) for i in range(4)]
    outs = engine.generate(reqs, 3, sampling, seed=5)
    live = [(r, o) for r, o in zip(reqs, outs) if not o.eos]
    assert live
    (r0, o0) = live[0]
    more = engine.generate([SegmentRequest(9, r0.context + o0.tokens, r0.path_id)], 4, sampling, 0)[0]
    assert_matches_recompute(model, {9: (r0.context, o0.tokens + more.tokens, o0.logprobs + more.logprobs,
                                         o0.entropies + more.entropies)}, sampling)
    if not more.eos:
        engine.release()  # every path is gone
        with pytest.raises(ValueError, match="not live"):  # rejected before any state is touched
            engine.generate([SegmentRequest(10, r0.context + o0.tokens + more.tokens, 9)], 2, sampling, 0)
    outs = engine.generate(reqs, 3, sampling, seed=5)
    r1, o1 = next((r, o) for r, o in zip(reqs, outs) if not o.eos)
    engine.load_weights(model.state_dict())  # the same tensors: nothing copied, caches dropped
    with pytest.raises(ValueError, match="not live"):
        engine.generate([SegmentRequest(10, r1.context + o1.tokens, r1.path_id)], 2, sampling, 0)


def test_sampler_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(50_000, 1)
    u = draws.uniforms(torch.arange(len(probs)), 3)
    freq = torch.bincount(draws.sample(probs, u), minlength=6).float() / len(probs)
    assert freq[[0, 2, 5]].sum() == 0  # filtered tokens are never drawn
    assert torch.allclose(freq, probs[0], atol=0.01)


def test_build_engine_hf(model):
    class Tok:
        eos_token_id, pad_token_id = EOS, None

    engine = build_engine("hf", model, Tok())
    assert isinstance(engine, HFEngine) and isinstance(engine, Engine) and engine.pad_token_id == EOS
    with pytest.raises(ValueError, match="one of"):
        build_engine("nope", model, Tok())
