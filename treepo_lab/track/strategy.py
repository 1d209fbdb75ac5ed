"""The branching strategy of a run, as MLflow tags: a short label for "Group by" and the long form.

`treepo.strategy` is short enough for the UI's group label, which shows about 10 characters: only
what differs from TreePO's reference setting (tree sampler, TreePO advantage averaged over levels,
b=2 from the first step, 8 segments of 16 tokens, fixed_avg branching, fixed-divergence budget,
random segment-aligned fallback), the most telling part first so a cut label still tells runs
apart. The reference itself is `treepo`; `grpo` is the sequential GRPO baseline, `grpo tree` GRPO
on tree rollouts; e.g. `4x32 size` is the 4x32 segment ablation with subgroup-size weighting,
`init2-8` TreePO with random initial divergence b0 in [2, 8], `lowp T2 init2-8` low-probability
encouraged branching at temperature 2 (paper Fig. 8).

The long form is one tag per dimension (`treepo.strategy.<dimension>`) plus `treepo.strategy.long`
joining them, so a sweep can also group by a single dimension (e.g. `treepo.strategy.shape`).

Labels and knobs of estimators and samplers are the facts their registry entries carry (a method
registered in treepo_lab/methods/ names itself, e.g. `treerl eptree`); a name this version does not know
(an older run) reads as itself. Works on the plain nested config (dicts), for both spellings of the
knobs that issue 9 restructured (`init_div_range` / `init_div`, `budget_control` / `budget`), so runs
logged before and after compare.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import treepo_lab.methods  # noqa: F401  (registers the tree methods: their labels)
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.registry import Registry
from treepo_lab.rollout.divergence import DIV_POLICIES
from treepo_lab.rollout.fallback import CUT_POLICIES
from treepo_lab.rollout.sampler import SAMPLERS
from treepo_lab.tags import STRATEGY_TAG

TREE_DIMS = ("init_div", "shape", "branching", "budget", "fallback")  # what the tree sampler's label names
REFERENCE_SHAPE = (8, 16)
REFERENCE_BRANCH = 2


def _num(v: Any) -> str:
    """2.0 -> "2", 0.5 -> "0.5": labels without trailing zeros."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def _init_div(s: Mapping) -> tuple[str, str]:
    """(short, long) of the initial divergence b0."""
    b = s.get("branch", REFERENCE_BRANCH)
    init = s.get("init_div")
    if isinstance(init, Mapping):  # {kind: fixed | random, min, max}
        rng = [init.get("min"), init.get("max")] if init.get("kind") == "random" else None
    else:  # the old spelling: null or [m, n]
        rng = list(s["init_div_range"]) if s.get("init_div_range") else None
    if rng:
        return f"init{rng[0]}-{rng[1]}", f"random b0 in [{rng[0]}, {rng[1]}] per prompt, then b={b}"
    return ("" if b == REFERENCE_BRANCH else f"b{b}"), f"fixed b={b}"


def _budget(s: Mapping) -> tuple[str, str]:
    b = s.get("budget")
    if isinstance(b, Mapping):  # {kind: fixed_div | random_div | step_token_budget, min, max, tokens}
        kind = b.get("kind", "fixed_div")
        lo, hi, tokens = b.get("min"), b.get("max"), b.get("tokens")
    else:  # by_fixed_div | by_random_div_{m}to{n} | by_infer_step_token_budget
        old = str(s.get("budget_control") or "by_fixed_div")
        tokens = s.get("step_token_budget")
        lo = hi = None
        if old.startswith("by_random_div_"):
            kind = "random_div"
            lo, hi = old[len("by_random_div_"):].split("to")
        else:
            kind = {"by_infer_step_token_budget": "step_token_budget"}.get(old, "fixed_div")
    if kind == "random_div":
        return f"bud{lo}-{hi}", f"random divergence in [{lo}, {hi}] per step"
    if kind == "step_token_budget":
        return f"tok{tokens}", f"{tokens} tokens per step"
    return "", "fixed divergence"


def _branching(s: Mapping) -> tuple[str, str]:
    policy = s.get("div_policy", "fixed_avg")
    code = _facts(DIV_POLICIES, policy, {"label": str(policy)[:6]})["label"]  # paper Fig. 8 lowp / highp
    if policy == "fixed_avg":
        return "", "fixed_avg"
    sched = s.get("div_temp_schedule") or {}
    kind = sched.get("kind", "constant")
    if kind != "constant":
        lo, hi = _num(sched.get("min_temp")), _num(sched.get("max_temp"))
        temp = f"T{hi}-{lo}" if "descending" in kind else f"T{lo}-{hi}"
        return f"{code} {temp}", f"{policy}, temperature {kind} {lo}..{hi}"
    t = s.get("div_temperature", 1.0)
    return (code if t == 1 else f"{code} T{_num(t)}"), f"{policy}, temperature {_num(t)}"


def _shape(s: Mapping) -> tuple[str, str]:
    shape = (s.get("max_depth"), s.get("segment_len"))
    shape_s = f"{shape[0]}x{shape[1]}"
    return ("" if shape == REFERENCE_SHAPE else shape_s), shape_s


def _fallback(s: Mapping) -> tuple[str, str]:
    cut = s.get("fallback_cut", "random")
    parts = [_facts(CUT_POLICIES, cut, {"label": f"fb-{cut}"})["label"]]
    window = s.get("fallback_window")
    if cut != "no_fallback" and window is not None and window > 0:  # null / <= 0 = l (segment-aligned)
        parts.append(f"fbw{window}")
    cand = s.get("fallback_candidates", "soft_boxed_and_eos")
    if cut != "no_fallback" and cand != "soft_boxed_and_eos":
        parts.append(f"fbc-{cand}")
    long = "no fallback" if cut == "no_fallback" else \
        f"{cut} cut, window {window if window and window > 0 else 'l'}, candidates {cand}"
    return " ".join(p for p in parts if p), long


def _facts(registry: Registry, name: str, unknown: dict) -> dict:
    return registry.info(name) if name in registry else unknown


def _knobs(registry: Registry, name: str, params: Mapping | None) -> tuple[list[str], list[str]]:
    """(short codes, long "k=v") of the knobs set away from their registered default."""
    short, long = [], []
    for k, knob in _facts(registry, name, {}).get("knobs", {}).items():
        v = (params or {}).get(k, knob.default)
        if v != knob.default:
            long.append(f"{k}={_num(v)}")
            if knob.code:
                short.append(f"{knob.code}{_num(v)}")
    return short, long


def _advantage(a: Mapping) -> tuple[str, str]:
    est = a.get("estimator", "treepo")
    parts, long = _knobs(ESTIMATORS, est, a.get("params"))
    long.insert(0, est)
    if est == "treepo":
        agg = a.get("aggregation", "average")
        long.append(f"aggregation {agg}")
        if agg == "group_size":
            parts.append("size")
        for key, code in (("remove_zero_std_subgroups", "rej"), ("drop_root", "noroot")):
            if a.get(key):
                parts.append(code)
                long.append(key)
    if est == "grpo" and a.get("norm_by_std") is False:
        parts.append("nostd")
        long.append("no std normalisation (Dr.GRPO)")
    return " ".join(parts), ", ".join(long)


def strategy_tags(cfg: Mapping) -> dict[str, str]:
    """`treepo.strategy` (short), `treepo.strategy.long` and one `treepo.strategy.<dimension>` tag each."""
    s, a = cfg.get("sampler") or {}, cfg.get("advantage") or {}
    kind, est = s.get("kind", "tree"), a.get("estimator", "treepo")
    sampler = _facts(SAMPLERS, kind, {"tree": True, "label": kind, "dims": TREE_DIMS})
    estimator = _facts(ESTIMATORS, est, {"label": est, "needs_tree": False})
    # the algorithm is named unless it is TreePO itself (then the label is only what differs); an
    # estimator that ignores the tree reads "<label> tree" on tree rollouts (GRPO with tree sampling)
    base = estimator["label"] if not sampler["tree"] else \
        "" if est == "treepo" else estimator["label"] if estimator["needs_tree"] else f"{estimator['label']} tree"
    knob_short, knob_long = _knobs(SAMPLERS, kind, s.get("params"))
    dims = {"sampler": (" ".join([sampler["label"], *knob_short]).strip(), ", ".join([kind, *knob_long])),
            "advantage": _advantage(a)}
    builders = {"init_div": _init_div, "shape": _shape, "branching": _branching, "budget": _budget,
                "fallback": _fallback}
    dims.update({d: builders[d](s) for d in sampler["dims"]})  # the sequential baseline has none to name
    # most telling first: the UI cuts the label after about 10 characters
    order = ("sampler", "branching", "shape", "fallback", "advantage", "budget", "init_div")
    short = " ".join(p for p in [base] + [dims[d][0] for d in order if d in dims] if p) or "treepo"
    tags = {STRATEGY_TAG: short}
    tags.update({f"{STRATEGY_TAG}.{d}": long for d, (_, long) in dims.items()})
    tags[f"{STRATEGY_TAG}.long"] = "; ".join(f"{d}: {long}" for d, (_, long) in dims.items())
    return tags
