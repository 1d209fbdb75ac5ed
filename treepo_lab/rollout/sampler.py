"""Segment-wise tree sampling (TreePO, arXiv 2508.17445) and the sequential baseline, behind one interface.

Each step sends one request per in-flight path to the engine (requests grouped by prompt so siblings
sit together), continues every path by at most l tokens, applies the stopping rules to the new
segment, then per prompt: divergence for the roots that still have active paths, fallback for those
that have none and fewer than w leaves. Every prompt ends with exactly w leaves (unless no_fallback),
never more (unless min_len drops exhaust fallback_patience); no leaf is deeper than d or longer than d*l.

Engine state: a path continued from the node generated at the previous step names that node as its
`parent_id` (the engine forks its live state); a fresh root or a fallback cut sends parent_id=None with
the full context. The sampler never looks at which engine it drives.

Other rollout loops (forking inside a segment, lookahead, pruning; treepo_lab/methods/) implement the
`Sampler` protocol on top of `SegmentSampler`, the shared machinery: one engine call per step for a queue
of `PathState`s (continuing live paths through the engine's KV forking, prefilling cut ones), nodes and
leaves recorded, stop rules applied. Each registers itself in SAMPLERS with its facts: `tree` (its trees
carry subgroup structure, so tree estimators apply), `needs_entropies`, `label`, `knobs` (sampler.params),
`dims` (the strategy-tag dimensions of SamplerConfig it reads) and an optional `check(cfg, knobs)`.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from treepo_lab.engines.base import Engine, EngineCounters, SamplingParams, SegmentRequest
from treepo_lab.registry import Registry
from treepo_lab.rollout import divergence, fallback, stopping
from treepo_lab.rollout.config import SamplerConfig, validate
from treepo_lab.rollout.tree import FinishReason, Leaf, Node, Tree
from treepo_lab.seeding import derive_seed, stream_key
from treepo_lab.validated import is_checked

# name -> sampler class (`sampler.kind`, `eval.sampler`)
SAMPLERS: Registry = Registry("sampler")

Decode = Callable[[list[int]], str]


@dataclass
class PathState:
    """One in-flight path: it will generate a new segment as a child of `last`. `live`: the engine
    still holds the state of `last` (continue it by parent_id); else its context is prefilled."""

    root: int  # prompt index
    last: int | None  # node it continues (None: the prompt)
    response: list[int]  # its tokens so far
    live: bool  # the engine holds the state of `last` (generated at the previous step)
    fallback_count: int = 0
    from_fallback: bool = False  # its next node is the first after a fallback restart


@dataclass
class RolloutStats:
    """What happened during one rollout call, beyond the trees (see accounting.py for the metrics)."""

    n_prompts: int = 0
    max_depth: int = 0  # d of the config (depth histogram bins)
    steps: int = 0
    requests_per_step: list[int] = field(default_factory=list)
    children_per_active_path: list[int] = field(default_factory=list)  # one entry per branching decision
    fallback_requests: list[int] = field(default_factory=list)  # per prompt
    fallback_rounds: list[int] = field(default_factory=list)  # per prompt
    finished_at_first_fallback: list[int | None] = field(default_factory=list)  # per prompt
    short_prompts: int = 0  # prompts with fewer than w leaves (no_fallback, or fallback_patience ran out)
    dropped_short: int = 0  # paths dropped by min_len
    pruned: int = 0  # new branches dropped by a pruning rule (methods/latr.py)
    div_temperature: float = 1.0
    gen_s: float = 0.0  # wall time of the whole rollout
    counters: EngineCounters = field(default_factory=EngineCounters)  # engine work during it


@dataclass
class RolloutResult:
    trees: list[Tree]
    stats: RolloutStats

    @classmethod
    def merge(cls, parts: list[RolloutResult]) -> RolloutResult:
        """One result from the results of consecutive shares of one batch (data-parallel ranks): trees
        and per-prompt lists in order, counts and engine work summed, per-step requests summed step by
        step, the wall time of the slowest."""
        first = parts[0].stats
        steps = max(p.stats.steps for p in parts)
        stats = RolloutStats(
            n_prompts=sum(p.stats.n_prompts for p in parts), max_depth=first.max_depth, steps=steps,
            requests_per_step=[sum(p.stats.requests_per_step[i] for p in parts if i < len(p.stats.requests_per_step))
                               for i in range(steps)],
            short_prompts=sum(p.stats.short_prompts for p in parts),
            dropped_short=sum(p.stats.dropped_short for p in parts), div_temperature=first.div_temperature,
            gen_s=max(p.stats.gen_s for p in parts),
            counters=EngineCounters(**{k: sum(getattr(p.stats.counters, k) for p in parts)
                                       for k in vars(first.counters)}))
        for name in ("children_per_active_path", "fallback_requests", "fallback_rounds", "finished_at_first_fallback"):
            setattr(stats, name, [x for p in parts for x in getattr(p.stats, name)])
        return cls([t for p in parts for t in p.trees], stats)

    def metrics(self) -> dict[str, float]:
        from treepo_lab.rollout.accounting import rollout_metrics

        return rollout_metrics(self.trees, self.stats)


class Sampler(Protocol):
    """What the trainer, evaluation and the CLI call: any rollout loop registered in SAMPLERS."""

    kind: str

    def rollout(self, prompts: list[list[int]], step: int = 0, total_steps: int = 1,
                seed: int | None = None, keys: list[int] | None = None) -> RolloutResult: ...


class SegmentSampler:
    """The machinery every segment-wise rollout loop shares (see module doc). `decode(token_ids) -> str`
    gives the segment text that the boxed and repetition rules read; `knobs` = sampler.params checked
    against the registered entry, defaults filled in."""

    kind = ""

    def __init__(self, engine: Engine, cfg: SamplerConfig, decode: Decode, eos_token_id: int):
        ok = is_checked(cfg)  # a validated config: its shape resolved, its knobs checked (treepo_lab/config.py)
        self.engine, self.cfg, self.decode, self.eos = engine, cfg if ok else validate(cfg), decode, eos_token_id
        self.sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k)
        self.stop_rules = stopping.stop_rules(self.cfg)
        self.knobs = SAMPLERS.filled(self.kind, cfg.params) if ok else SAMPLERS.knobs(self.kind, cfg.params, "sampler.params")

    def _begin(self, prompts: list[list[int]], step: int, total_steps: int, seed: int | None,
               keys: list[int] | None = None):
        """New trees (one per prompt), stats and one random stream per prompt.

        `keys`: one integer per prompt naming its stream (default: its index). Every draw for a prompt's
        tree (its divergence, fallback and token draws) comes from (seed, key) alone, so the trainer
        passes each prompt's index in the global batch and a prompt gets the same tree whichever rank
        samples it with whichever neighbours (except under budget.kind=step_token_budget, whose budget is
        shared by the prompts of one call)."""
        cfg, n = self.cfg, len(prompts)
        seed = cfg.seed if seed is None else seed
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        keys = list(range(n)) if keys is None else list(keys)
        if len(keys) != n:
            raise ValueError(f"one key per prompt: {len(keys)} keys for {n} prompts")
        self._root_keys = [derive_seed(seed, k) for k in keys]
        rngs = [np.random.default_rng(k) for k in self._root_keys]
        temperature = divergence.div_temperature(cfg, step, total_steps)
        stats = RolloutStats(n_prompts=n, max_depth=cfg.max_depth, div_temperature=temperature,
                             fallback_requests=[0] * n, fallback_rounds=[0] * n,
                             finished_at_first_fallback=[None] * n)
        meta = {"sampler": asdict(cfg), "seed": seed, "div_temperature": temperature}
        trees = [Tree(prompt_ids=list(p), prompt_text=self.decode(list(p)), meta=dict(meta)) for p in prompts]
        self._next_id = 0
        return trees, stats, rngs, temperature

    def _run(self, trees: list[Tree], stats: RolloutStats, loop: Callable[[], None]) -> RolloutResult:
        """Run `loop` (the engine calls), timing it and counting the engine's work; release its state."""
        before, t0 = self.engine.counters.snapshot(), time.perf_counter()
        try:
            loop()
        finally:
            self.engine.release()
        stats.gen_s = time.perf_counter() - t0
        stats.counters = self.engine.counters.since(before)
        assert all(len(t.leaves) <= self.cfg.width for t in trees)
        stats.short_prompts = sum(len(t.leaves) < self.cfg.width for t in trees)
        return RolloutResult(trees, stats)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _step(self, queue: list[PathState], trees: list[Tree], stats: RolloutStats):
        """Generate one segment for every in-flight path; sort the paths into active and finished."""
        cfg = self.cfg
        ids = [self._new_id() for _ in queue]
        sibling: Counter[int] = Counter()  # a path's place among its prompt's requests of this step
        requests = []
        for p, nid in zip(queue, ids):
            requests.append(SegmentRequest(path_id=nid, context=trees[p.root].prompt_ids + p.response,
                                           parent_id=p.last if p.live else None,
                                           seed=stream_key(self._root_keys[p.root], stats.steps, sibling[p.root])))
            sibling[p.root] += 1
        stats.requests_per_step.append(len(requests))
        # every request carries its own stream key: the call seed only names the call
        outs = self.engine.generate(requests, cfg.segment_len, self.sampling, stats.steps)

        active: dict[int, list[PathState]] = defaultdict(list)
        finished_now: Counter[int] = Counter()
        for p, nid, out in zip(queue, ids, outs):
            tree = trees[p.root]
            parent_depth = tree.nodes[p.last].depth if p.last is not None else 0
            node = tree.add(Node(node_id=nid, parent_id=p.last, depth=parent_depth + 1, step=stats.steps,
                                 tokens=list(out.tokens), logprobs=list(out.logprobs),
                                 entropies=list(out.entropies), text=self.decode(list(out.tokens)),
                                 from_fallback=p.from_fallback))
            response = p.response + node.tokens
            eos = stopping.has_eos(node.tokens, out.eos, self.eos)
            seg = stopping.Segment(node.text, eos, len(response), self._depth(node, len(response)))
            reason = stopping.stop_reason(self.stop_rules, cfg, seg)
            if reason is None:
                active[p.root].append(PathState(p.root, nid, response, True, p.fallback_count))
                continue
            if len(response) > cfg.max_response_len:  # length cap: keep exactly d*l tokens
                self._truncate(node, len(node.tokens) - (len(response) - cfg.max_response_len))
                response = response[:cfg.max_response_len]
            if stopping.too_short(cfg, len(response)):
                node.finish_reason = FinishReason.DROPPED_SHORT
                stats.dropped_short += 1
                continue
            node.finish_reason = reason
            tree.leaves.append(Leaf(node_path=tree.path_to(nid), finish_reason=reason,
                                    fallback_count=p.fallback_count))
            finished_now[p.root] += 1
        return active, finished_now

    def _depth(self, node: Node, response_len: int) -> int:
        """The depth the max_depth rule reads: segments on the path (a loop that splits segments redefines it)."""
        return node.depth

    def _truncate(self, node: Node, keep: int) -> None:
        node.tokens, node.logprobs, node.entropies = (node.tokens[:keep], node.logprobs[:keep],
                                                      node.entropies[:keep])
        node.text = self.decode(node.tokens)

@SAMPLERS.register("tree", tree=True, label="", dims=("init_div", "shape", "branching", "budget", "fallback"))
class TreeSampler(SegmentSampler):
    """TreePO's segment-wise tree sampler: divergence at segment ends, budget transfer, fallback."""

    kind = "tree"

    # ---- the three places where the sequential baseline differs ---------------------------------------
    def _initial_copies(self, rng: np.random.Generator, n_prompts: int) -> int:
        return divergence.initial_branching(self.cfg, rng, n_prompts)

    def _children(self, tree: Tree, paths: list[PathState], finished: int, finished_now: int,
                  n_roots_active: int, n_prompts: int, rng, temperature: float) -> list[int]:
        cfg = self.cfg
        b = divergence.branch_factor(cfg, rng, n_prompts)
        total = divergence.step_total(cfg, finished, finished_now, len(paths), b, n_roots_active)
        views = [self._view(tree, p) for p in paths]
        alloc = divergence.DIV_POLICIES.get(cfg.div_policy, "sampler.div_policy")(views, total, temperature)
        assert len(alloc) == len(paths) and min(alloc) >= 1 and sum(alloc) == total, (alloc, total)
        return alloc

    def _falls_back(self) -> bool:
        return self.cfg.fallback_cut != "no_fallback"

    # ---- rollout -------------------------------------------------------------------------------------
    def rollout(self, prompts: list[list[int]], step: int = 0, total_steps: int = 1,
                seed: int | None = None, keys: list[int] | None = None) -> RolloutResult:
        trees, stats, rngs, temperature = self._begin(prompts, step, total_steps, seed, keys)
        n = len(prompts)
        # per root: leaves when it last fell back, and fallback rounds in a row that added no leaf
        self._leaves_at_fallback, self._idle_fallbacks = [-1] * n, [0] * n
        queue = [PathState(r, None, [], live=False)
                 for r in range(n) for _ in range(self._initial_copies(rngs[r], n))]

        def loop():
            nonlocal queue
            while queue:
                stats.steps += 1
                active, finished_now = self._step(queue, trees, stats)
                queue = self._next_queue(active, finished_now, trees, stats, rngs, temperature)

        return self._run(trees, stats, loop)

    def _next_queue(self, active, finished_now, trees, stats, rngs, temperature) -> list[PathState]:
        """Divergence for roots with active paths, fallback for the others; grouped by root."""
        cfg, n = self.cfg, len(trees)
        nxt: list[PathState] = []
        for root, paths in active.items():
            alloc = self._children(trees[root], paths, len(trees[root].leaves), finished_now[root],
                                   len(active), n, rngs[root], temperature)
            stats.children_per_active_path.extend(alloc)
            for p, k in zip(paths, alloc):
                nxt += [PathState(root, p.last, p.response, live=True, fallback_count=p.fallback_count)
                        for _ in range(k)]
        for root, tree in enumerate(trees):
            missing = cfg.width - len(tree.leaves)
            if root in active or missing <= 0 or not self._falls_back():
                continue
            # a round that added no leaf had all its paths dropped by min_len: give up after
            # fallback_patience such rounds in a row rather than loop forever. (Counting every round
            # would cut trees short that fill one leaf per round, e.g. b=1 and no qualifying candidate.)
            idle = len(tree.leaves) == self._leaves_at_fallback[root]
            self._idle_fallbacks[root] = self._idle_fallbacks[root] + 1 if idle else 0
            if self._idle_fallbacks[root] >= cfg.fallback_patience:
                continue
            self._leaves_at_fallback[root] = len(tree.leaves)
            if stats.finished_at_first_fallback[root] is None:
                stats.finished_at_first_fallback[root] = len(tree.leaves)
            stats.fallback_rounds[root] += 1
            rng = rngs[root]
            copies = lambda rng=rng: divergence.branch_factor(cfg, rng, n)  # b, drawn per candidate
            plan = fallback.plan_fallback(tree, missing, cfg, rng, copies, self._new_id, self.decode)
            for restart in plan:
                response = tree.tokens_to(restart.last)
                stats.fallback_requests[root] += restart.copies
                nxt += [PathState(root, restart.last, response, live=False, fallback_count=restart.fallback_count,
                              from_fallback=True) for _ in range(restart.copies)]
        nxt.sort(key=lambda p: p.root)  # stable: siblings stay adjacent (prefix-cache locality)
        return nxt

    @staticmethod
    def _view(tree: Tree, p: PathState) -> divergence.ActivePath:
        path = tree.path_to(p.last)
        last = tree.nodes[p.last]
        return divergence.ActivePath(
            logprobs=[x for nid in path for x in tree.nodes[nid].logprobs],
            last_logprobs=last.logprobs, last_entropies=last.entropies)


@SAMPLERS.register("sequential", tree=False, label="", dims=())
class SequentialSampler(TreeSampler):
    """The baseline: w independent trajectories per prompt (b = 1, no fallback), the same stopping rules
    and length budget d*l, generated segment by segment behind the same interface."""

    kind = "sequential"

    def _initial_copies(self, rng, n_prompts: int) -> int:
        return self.cfg.width

    def _children(self, tree, paths, finished, finished_now, n_roots_active, n_prompts, rng, temperature):
        return [1] * len(paths)

    def _falls_back(self) -> bool:
        return False


def build_sampler(cfg: SamplerConfig, engine: Engine, decode: Decode, eos_token_id: int) -> Sampler:
    return SAMPLERS.get(cfg.kind, "sampler.kind")(engine, cfg, decode, eos_token_id)
