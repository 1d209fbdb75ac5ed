"""Sampler configuration: every knob of the segment-wise tree sampler and the sequential baseline.

Data and value checks only. Names follow the released TreePO config without the `tree_` prefix; the official
name is given in each comment (README.md has the whole name map). Every pluggable choice is a
registered name plus plain numbers: the names (kind, init_div.kind, budget.kind, div_policy,
div_temp_schedule.kind, stop_rules, fallback_candidates, fallback_cut) are checked against their
registries in one place, treepo_lab/config.py; `validate` here checks the values.

Tree shape: `shape: "DxL"` sets max_depth=D and segment_len=L as one value (a sweep picks the shape at a
constant budget d*l). With a shape, max_depth and segment_len may be left null (they follow the
shape) or set to the same numbers; a different explicit number is an error. Without a shape, null
means the defaults d=8, l=16. `validate` returns the config with both numbers filled in and the shape
written as "DxL" for them, so every validated config (and every logged run) names its shape the same
way, however it was set.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from treepo_lab.registry import ConfigError

DEFAULT_MAX_DEPTH, DEFAULT_SEGMENT_LEN = 8, 16
_SHAPE = re.compile(r"(\d+)x(\d+)")
# the rules that bound every path (EOS ends decoding; the caps keep depth <= d and length <= d*l)
REQUIRED_STOP_RULES = ("eos", "max_length", "max_depth")
BOXED_STOP_RULES = ("boxed", "boxed_with_eos")


@dataclass
class DivTempSchedule:
    """Schedules the log-prob softmax temperature over training (`div_temp_scheduler`)."""

    kind: str = "constant"  # constant | sinusoid_ascending | sinusoid_descending (`scheduler_type`)
    min_temp: float = 0.5
    max_temp: float = 10.0


@dataclass
class InitDivConfig:
    """The first step's branching b0, per prompt (never more than w)."""

    # fixed: b0 as the budget gives it (b; a random_div draw; the token budget's share) |
    # random: b0 ~ UniformInt[min, max] per prompt, "More Init Divergence"
    # (`tree_random_first_div_{min,max}`, dead code upstream, B1 fixed)
    kind: str = "fixed"
    min: int = 2  # random only (`tree_random_first_div_min`)
    max: int = 8  # random only (`tree_random_first_div_max`)


@dataclass
class BudgetConfig:
    """How many children the active paths of one root get per step in total
    (`tree_divergence_budget_control`)."""

    # fixed_div (`by_fixed_div`): b = sampler.branch |
    # random_div (`by_random_div_{min}to{max}`): b ~ UniformInt[min, max] per root, step and fallback candidate |
    # step_token_budget (`by_infer_step_token_budget`): `tokens` per step shared by the active roots
    kind: str = "fixed_div"
    min: int = 2  # random_div only
    max: int = 8  # random_div only
    tokens: int = 4096  # step_token_budget only (upstream reads `tree_fixed_step_div` as this number)


def _default_stop_rules() -> list[str]:
    return ["boxed", "eos", "max_length", "max_depth", "repetition"]


@dataclass
class SamplerConfig:
    kind: str = "tree"  # registered sampler: tree | sequential (GRPO vs GRPO-with-tree-sampling) | eptree | latr
    # the knobs of the chosen sampler, as registered with it (checked in treepo_lab/config.py), e.g.
    # {forks: 2, rounds: 1, branches: 2} for eptree; tree and sequential take none
    params: dict[str, Any] = field(default_factory=dict)
    width: int = 16  # w: leaves per prompt (`tree_max_width`)
    shape: str | None = None  # "DxL", e.g. "8x16": max_depth=D and segment_len=L together; null: the keys
    max_depth: int | None = None  # d: max segments per trajectory (`tree_max_depth`); null: shape's D, else 8
    segment_len: int | None = None  # l: max new tokens per step (`tree_max_token_per_step`); null: shape's L, else 16
    branch: int = 2  # b: children per active path per step; also b0 and fallback copies (`tree_fixed_step_div`)
    init_div: InitDivConfig = field(default_factory=InitDivConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # fixed_avg | logprob_weighted_div | inverse_logprob_weighted_div | norm_logprob_weighted_div |
    # norm_inv_logprob_weighted_div | node_logprob_weighted_div | inverse_node_logprob_weighted_div |
    # entropy_weighted_div (ours: true next-token entropy over the last segment, high entropy first)
    div_policy: str = "fixed_avg"  # `tree_div_policy`
    div_temperature: float = 1.0  # `tree_logprob_div_temperature` (paper ablation: 2.0)
    div_temp_schedule: DivTempSchedule = field(default_factory=DivTempSchedule)
    # stopping: registered rules applied to each new segment in this order, the first that fires names
    # the finish reason: boxed | boxed_with_eos (boxed answer AND EOS, `tree_boxed_eos_policy=
    # boxed_and_eos_first`; plain boxed is `boxed_as_eos`) | eos | max_length | max_depth | repetition
    # (listed first = `tree_repetition_es_policy=most_prioritized`, last = `least_prioritized`).
    # eos, max_length and max_depth are required; at most one boxed rule.
    stop_rules: list[str] = field(default_factory=_default_stop_rules)
    repetition_window: int = 32  # characters (hard-coded upstream)
    repetition_count: int = 8  # occurrences of one window that flag a repetition (hard-coded upstream)
    min_len: int | None = None  # drop finished paths shorter than this; null: off (`tree_traj_filter_min_len`)
    # fallback
    # soft_boxed_and_eos | finished_first | finished_first_strict | random_all | longer_first |
    # boxed_ge_window (`tree_fallback_traj_policy`; boxed_ge_window_{n} upstream, n = fallback_min_windows)
    fallback_candidates: str = "soft_boxed_and_eos"
    fallback_min_windows: int = 1  # boxed_ge_window only: n, the least response length in windows W
    # random | min_logprob_token | block | inverse_block | from_start | no_fallback (`tree_fallback_policy`)
    fallback_cut: str = "random"
    fallback_window: int | None = None  # W for `random` (`tree_fallback_window_size`); null: l (B3 fixed)
    # max W-blocks to back off; for block / inverse_block the block size (`tree_max_fallback_window`); null: unlimited
    max_fallback_window: int | None = None
    fallback_block_size: int = 16  # block size for block / inverse_block (`cal_prob_block_size`)
    require_aligned_window: bool = True  # reject a fallback_window that is not a multiple of l
    # ours: a root gives up falling back after this many rounds in a row that added no leaf (only
    # min_len drops can cause that); its tree then has fewer than w leaves (rollout/fallback_exhausted)
    fallback_patience: int = 64
    # sampling (the distribution log-probs are reported under)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    seed: int = 0

    @property
    def max_response_len(self) -> int:
        """d * l; a validated config holds both numbers (validate resolves the shape once), so nothing is parsed."""
        if self.max_depth is not None and self.segment_len is not None:
            return self.max_depth * self.segment_len
        d, l = resolve_shape(self)
        return d * l


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_shape(shape: str, key: str = "sampler.shape") -> tuple[int, int]:
    match = _SHAPE.fullmatch(str(shape).strip())
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise ConfigError(key, shape, "null or 'DxL' with integers D, L >= 1, e.g. '8x16' (d=8 segments of l=16)")
    return int(match.group(1)), int(match.group(2))


def resolve_shape(cfg: SamplerConfig, prefix: str = "sampler.") -> tuple[int, int]:
    """(d, l): the explicit keys, the shape's numbers where a key is null, else the defaults."""
    if cfg.shape is None:
        return (DEFAULT_MAX_DEPTH if cfg.max_depth is None else cfg.max_depth,
                DEFAULT_SEGMENT_LEN if cfg.segment_len is None else cfg.segment_len)
    d, l = parse_shape(cfg.shape, prefix + "shape")
    for key, value, want in (("max_depth", cfg.max_depth, d), ("segment_len", cfg.segment_len, l)):
        if value is not None and value != want:
            raise ConfigError(prefix + key, value,
                              f"null or {want}: sampler.shape={cfg.shape!r} sets it (set one or the other)")
    return d, l


def validate(cfg: SamplerConfig, prefix: str = "sampler.") -> SamplerConfig:
    """Check every value before any compute; raise ConfigError (key, value, what is allowed) on the
    first bad one. Returns the config with max_depth, segment_len and shape ("DxL") resolved."""

    def bad(key, value, allowed):
        raise ConfigError(prefix + key, value, allowed)

    def need_int(key, v, lo, what=None):
        if not _is_int(v) or v < lo:
            bad(key, v, what or f"an integer >= {lo}")

    def need_positive(key, v):
        if not _is_num(v) or not v > 0:
            bad(key, v, "a number > 0")

    for key in ("width", "branch"):
        need_int(key, getattr(cfg, key), 1)
    for key in ("max_depth", "segment_len"):
        v = getattr(cfg, key)
        if v is not None:
            need_int(key, v, 1, "an integer >= 1, or null (from sampler.shape)")
    d, l = resolve_shape(cfg, prefix)
    cfg = dataclasses.replace(cfg, shape=f"{d}x{l}", max_depth=d, segment_len=l)

    init = cfg.init_div
    if init.kind == "random":
        need_int("init_div.min", init.min, 1)
        need_int("init_div.max", init.max, init.min,
                 f"an integer >= init_div.min={init.min} (values above width are capped at width)")
    budget = cfg.budget
    if budget.kind == "random_div":
        need_int("budget.min", budget.min, 1)
        need_int("budget.max", budget.max, budget.min, f"an integer >= budget.min={budget.min}")
    if budget.kind == "step_token_budget":
        need_int("budget.tokens", budget.tokens, 1)

    need_positive("div_temperature", cfg.div_temperature)
    sched = cfg.div_temp_schedule
    need_positive("div_temp_schedule.min_temp", sched.min_temp)
    need_positive("div_temp_schedule.max_temp", sched.max_temp)
    if sched.min_temp > sched.max_temp:
        bad("div_temp_schedule.min_temp", sched.min_temp, f"a number <= div_temp_schedule.max_temp={sched.max_temp}")

    rules = list(cfg.stop_rules) if isinstance(cfg.stop_rules, (list, tuple)) else None
    if not rules or not all(isinstance(r, str) for r in rules) or len(set(rules)) != len(rules):
        bad("stop_rules", cfg.stop_rules, "a list of distinct rule names, e.g. [boxed, eos, max_length, max_depth, repetition]")
    missing = [r for r in REQUIRED_STOP_RULES if r not in rules]
    if missing:
        bad("stop_rules", rules, f"a list that includes {', '.join(REQUIRED_STOP_RULES)} (missing: {', '.join(missing)})")
    if sum(r in BOXED_STOP_RULES for r in rules) > 1:
        bad("stop_rules", rules, f"at most one of {', '.join(BOXED_STOP_RULES)}")
    need_int("repetition_window", cfg.repetition_window, 1)
    need_int("repetition_count", cfg.repetition_count, 1)
    if cfg.min_len is not None:
        need_int("min_len", cfg.min_len, 1, "an integer >= 1, or null (off)")
        if cfg.min_len > d * l:
            bad("min_len", cfg.min_len,
                f"null or an integer <= max_depth*segment_len={d * l} (a longer minimum can never be met)")

    need_int("fallback_min_windows", cfg.fallback_min_windows, 1)
    if cfg.fallback_window is not None:
        need_int("fallback_window", cfg.fallback_window, 1, "an integer >= 1, or null (= segment_len)")
        if cfg.require_aligned_window and cfg.fallback_window % l:
            bad("fallback_window", cfg.fallback_window,
                f"a multiple of segment_len={l} (or null for segment_len); set require_aligned_window=false "
                "to allow cuts inside segments")
    if cfg.max_fallback_window is not None:
        need_int("max_fallback_window", cfg.max_fallback_window, 1, "an integer >= 1, or null (unlimited)")
        if cfg.fallback_cut == "min_logprob_token":
            bad("max_fallback_window", cfg.max_fallback_window,
                "null with fallback_cut=min_logprob_token (the cut is the argmin over the whole response)")
    need_int("fallback_block_size", cfg.fallback_block_size, 1)
    need_int("fallback_patience", cfg.fallback_patience, 1)

    need_positive("temperature", cfg.temperature)
    if not _is_num(cfg.top_p) or not 0 < cfg.top_p <= 1:
        bad("top_p", cfg.top_p, "a number in (0, 1]")
    need_int("top_k", cfg.top_k, -1, "-1 or 0 (off) or a positive integer")
    need_int("seed", cfg.seed, 0)
    return cfg
