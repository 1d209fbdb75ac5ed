"""Held-out evaluation: avg@k, pass@k and maj@k with sequential (default) or tree sampling.

Greedy evaluation (temperature 0) samples with top_k=1, i.e. argmax decoding through the same engine
and sampler, so its compute is counted the same way as training rollouts. Responses are scored with the
same time limit as training (algo/scoring.py): a verifier that raises or hangs scores the response
wrong, counted in eval/reward_errors and eval/reward_timeouts.

With `eval.sample_k` > 0 and a greedy main evaluation, the same evaluation also samples sample_k responses
per problem at temperature 1 (top_p 1, sequential sampler), each chunk with its own seed derived from the
evaluation's, and logs eval/sample_accuracy (avg@sample_k at T=1, mean correctness over every sample): a
smoother learning metric than greedy accuracy, which it leaves unchanged. Their tokens, time and verifier
failures count in eval/decoded_tokens, eval/prefill_tokens, eval/wall_s and eval/reward_*.

Across ranks (trainer.nproc > 1) the chunks of `eval.batch_size` problems are dealt round-robin, each
sampled with the seed it has in one process (seed + its first index), and the records gathered back in
order: the numbers are those of one process, for 1/N of the work per rank.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from treepo_lab.algo.scoring import Scorer
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.seeding import derive_seed
from treepo_lab.tasks.check import AnswerCheck
from treepo_lab.train.config import EvalConfig, eval_sampler_config, sample_sampler_config
from treepo_lab.validated import is_checked, mark
from treepo_lab.train.distributed import SINGLE, World


_SAMPLES = 1  # purpose of derive_seed(eval seed, purpose): the sample_k samples' stream


def majority_correct(responses: list[str], reference: str, check: AnswerCheck) -> bool:
    """maj@k: the most frequent answer the task's check extracts, decided by the same check."""
    votes = Counter(a.strip() for a in map(check.extract, responses) if a is not None)
    if not votes:
        return False
    return check.equal(votes.most_common(1)[0][0], reference)


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of 0/1 (or real) values."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def evaluate(engine, tokenizer, task, problems, ev: EvalConfig, sampler: SamplerConfig, encode, decode,
             seed: int = 0, progress=None, *, reward_timeout_s: float, world: World = SINGLE) -> tuple[dict, list[dict]]:
    """Score `problems` (this rank's chunks of them; every rank gets every record back); returns (metrics,
    per-problem records with sample outputs)."""
    with Scorer(task, decode, reward_timeout_s) as scorer:
        return _evaluate(engine, tokenizer, scorer, problems, ev, sampler, encode, decode, seed, progress, world)


def _derived(make, sampler: SamplerConfig, ev: EvalConfig) -> SamplerConfig:
    """The evaluation's sampler config, made from the run's; checked when those were (treepo_lab/config.py
    validates the evaluation's sampler with them), so building its sampler checks nothing again."""
    cfg = make(sampler, ev)
    if is_checked(sampler) and is_checked(ev):
        mark(cfg)
    return cfg


def _evaluate(engine, tokenizer, scorer: Scorer, problems, ev, sampler, encode, decode, seed, progress, world):
    scfg = _derived(eval_sampler_config, sampler, ev)
    smp = build_sampler(scfg, engine, decode, tokenizer.eos_token_id)
    sample_k = ev.sample_k if ev.temperature == 0 else 0
    sampled = build_sampler(_derived(sample_sampler_config, sampler, ev), engine, decode, tokenizer.eos_token_id) \
        if sample_k else None
    sample_seed = derive_seed(seed, _SAMPLES)
    before = engine.counters.snapshot()
    t0 = time.perf_counter()
    mine = []  # (first index, records) of this rank's chunks
    for start in list(range(0, len(problems), ev.batch_size))[world.rank :: world.size]:
        chunk = problems[start : start + ev.batch_size]
        result = smp.rollout([encode(p.prompt) for p in chunk], seed=seed + start)
        chunk_records = []
        mine.append((start, chunk_records))
        for prob, tree in zip(chunk, result.trees):
            texts = scorer.texts(tree)
            correct = [scorer.correct(t, prob) for t in texts]
            chunk_records.append({
                "id": prob.id, "prompt": prob.prompt, "answer": prob.answer, "responses": texts,
                "correct": correct, "length": [len(tree.response_tokens(lf)) for lf in tree.leaves],
                "maj_correct": scorer.call(majority_correct, texts, prob.answer, scorer.task.check, default=False),
            })
        if sampled is not None:  # the T=1 samples of the same chunk, seeded as in one process
            samples = sampled.rollout([encode(p.prompt) for p in chunk], seed=sample_seed + start)
            for prob, tree, record in zip(chunk, samples.trees, chunk_records):
                record["sample_correct"] = [scorer.correct(t, prob) for t in scorer.texts(tree)]
        if progress is not None:
            progress(len(chunk) * world.size)  # (rank 0's bar: the others advance alike)
    used = engine.counters.since(before)
    gathered = world.all_gather((mine, (used.decoded_tokens, used.prefill_tokens, scorer.errors, scorer.timeouts)))
    wall = time.perf_counter() - t0
    chunks = sorted((c for rank_chunks, _ in gathered for c in rank_chunks), key=lambda c: c[0])
    records = [r for _, chunk_records in chunks for r in chunk_records]
    decoded, prefill, errors, timeouts = (int(x) for x in np.sum([counts for _, counts in gathered], axis=0))
    k = ev.k
    acc = [float(np.mean(r["correct"])) if r["correct"] else 0.0 for r in records]
    metrics = {
        f"eval/avg_at_{k}": float(np.mean(acc)),
        f"eval/pass_at_{k}": float(np.mean([any(r["correct"]) for r in records])),
        f"eval/maj_at_{k}": float(np.mean([r["maj_correct"] for r in records])),
        "eval/accuracy": float(np.mean(acc)),
        "eval/response_length": float(np.mean([np.mean(r["length"]) for r in records if r["length"]] or [0])),
        "eval/decoded_tokens": decoded,
        "eval/prefill_tokens": prefill,
        "eval/wall_s": wall,
        "eval/n_problems": len(records),
        "eval/reward_errors": errors,
        "eval/reward_timeouts": timeouts,
    }
    if sample_k:
        samples = [c for r in records for c in r.get("sample_correct", [])]
        metrics["eval/sample_accuracy"] = float(np.mean(samples)) if samples else 0.0
    lo, hi = bootstrap_ci(acc)
    metrics["eval/accuracy_ci_low"], metrics["eval/accuracy_ci_high"] = lo, hi
    return metrics, records
