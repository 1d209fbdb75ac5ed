"""Sampler configuration: every knob of the segment-wise tree sampler and the sequential baseline.

Names follow TREEPO_SPEC.md §7.1 without the `tree_` prefix; the official name is given in each
comment. Validation runs before any compute (see `validate`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class DivTempSchedule:
    """Schedules the log-prob softmax temperature over training (`div_temp_scheduler`)."""

    kind: str = "constant"  # constant | sinusoid_ascending | sinusoid_descending
    min_temp: float = 0.5
    max_temp: float = 10.0


@dataclass
class SamplerConfig:
    kind: str = "tree"  # tree | sequential (GRPO and GRPO-with-tree-sampling differ only here)
    width: int = 16  # w: leaves per prompt (`tree_max_width`)
    max_depth: int = 8  # d: max segments per trajectory (`tree_max_depth`)
    segment_len: int = 16  # l: max new tokens per step (`tree_max_token_per_step`)
    branch: int = 2  # b: children per active path per step; also b0 and fallback copies (`tree_fixed_step_div`)
    # initial divergence: null = fixed b; [m, n] = per-prompt UniformInt[m, n] ("More Init Divergence")
    init_div_range: list[int] | None = None  # `tree_random_first_div_{min,max}` (dead code B1 upstream)
    # by_fixed_div | by_random_div_{m}to{n} | by_infer_step_token_budget (`tree_divergence_budget_control`)
    budget_control: str = "by_fixed_div"
    step_token_budget: int = 4096  # tokens per step for by_infer_step_token_budget
    # fixed_avg | logprob_weighted_div | inverse_logprob_weighted_div | norm_logprob_weighted_div |
    # norm_inv_logprob_weighted_div | node_logprob_weighted_div | inverse_node_logprob_weighted_div |
    # entropy_weighted_div (ours: true next-token entropy over the last segment, high entropy first)
    div_policy: str = "fixed_avg"  # `tree_div_policy`
    div_temperature: float = 1.0  # `tree_logprob_div_temperature` (paper ablation: 2.0)
    div_temp_schedule: DivTempSchedule = field(default_factory=DivTempSchedule)
    # stopping rules
    boxed_eos_policy: str = "boxed_as_eos"  # boxed_as_eos | boxed_and_eos_first
    repetition_policy: str = "least_prioritized"  # least_prioritized | most_prioritized
    repetition_window: int = 32  # characters
    repetition_count: int = 8  # occurrences of one window that flag a repetition
    min_len: int = -1  # drop finished leaves shorter than this (<= 0: off) (`tree_traj_filter_min_len`)
    # fallback
    fallback_candidates: str = "soft_boxed_and_eos"  # `tree_fallback_traj_policy`; also boxed_ge_window_{n}
    fallback_cut: str = "random"  # random | min_logprob_token | block | inverse_block | from_start | no_fallback
    fallback_window: int = -1  # W for `random` (<= 0 means l: segment-aligned; B3 fixed)
    max_fallback_window: int = -1  # max W-blocks to back off (<= 0: unlimited)
    fallback_block_size: int = 16  # block size for block / inverse_block (`cal_prob_block_size`)
    require_aligned_window: bool = True  # reject a fallback_window that is not a multiple of l
    # ours: a root stops falling back after this many rounds (min_len could otherwise drop every path
    # forever); its tree then has fewer than w leaves, counted in rollout/fallback_exhausted
    max_fallback_rounds: int = 64
    # sampling (the distribution log-probs are reported under)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0

    @property
    def max_response_len(self) -> int:
        return self.max_depth * self.segment_len


KINDS = ("tree", "sequential")
BOXED_EOS_POLICIES = ("boxed_as_eos", "boxed_and_eos_first")
REPETITION_POLICIES = ("least_prioritized", "most_prioritized")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: SamplerConfig, prefix: str = "sampler.") -> SamplerConfig:
    """Check every knob before any compute; raise ConfigError (key, value, what is allowed) on the
    first bad one. Names of policies are checked against their registries."""
    from treepo_lab.registry import ConfigError
    from treepo_lab.rollout import divergence, fallback  # lazy: they import this module's types

    def bad(key, value, allowed):
        raise ConfigError(prefix + key, value, allowed)

    def need_int(key, lo, what=None):
        v = getattr(cfg, key)
        if not _is_int(v) or v < lo:
            bad(key, v, what or f"an integer >= {lo}")

    def need_positive(key, v=None, name=None):
        v = getattr(cfg, key) if v is None else v
        if not _is_num(v) or not v > 0:
            bad(name or key, v, "a number > 0")

    def need_choice(key, choices):
        v = getattr(cfg, key)
        if v not in choices:
            bad(key, v, f"one of {', '.join(choices)}")

    need_choice("kind", KINDS)
    for key in ("width", "max_depth", "segment_len", "branch"):
        need_int(key, 1)

    rng = cfg.init_div_range
    if rng is not None:
        rng = list(rng)
        if len(rng) != 2 or not all(_is_int(x) for x in rng):
            bad("init_div_range", cfg.init_div_range, "null (fixed b) or [m, n]: two integers")
        if rng[0] < 1 or rng[0] > rng[1]:
            bad("init_div_range", cfg.init_div_range,
                "[m, n] with 1 <= m <= n (values above width are capped at width)")

    bc = cfg.budget_control
    if bc not in divergence.FIXED_BUDGET_CONTROLS:
        mn = divergence.parse_random_div(bc)
        if mn is None:
            bad("budget_control", bc,
                f"one of {', '.join(divergence.FIXED_BUDGET_CONTROLS)} or by_random_div_{{m}}to{{n}}")
        if mn[0] < 1 or mn[0] > mn[1]:
            bad("budget_control", bc, "by_random_div_{m}to{n} with 1 <= m <= n")
    need_int("step_token_budget", 1)

    if cfg.div_policy not in divergence.DIV_POLICIES:
        bad("div_policy", cfg.div_policy, f"one of {', '.join(divergence.DIV_POLICIES.names())}")
    need_positive("div_temperature")
    sched = cfg.div_temp_schedule
    if sched.kind not in divergence.TEMP_SCHEDULES:
        bad("div_temp_schedule.kind", sched.kind, f"one of {', '.join(divergence.TEMP_SCHEDULES.names())}")
    need_positive("div_temp_schedule", sched.min_temp, "div_temp_schedule.min_temp")
    need_positive("div_temp_schedule", sched.max_temp, "div_temp_schedule.max_temp")
    if sched.min_temp > sched.max_temp:
        bad("div_temp_schedule.min_temp", sched.min_temp,
            f"a number <= div_temp_schedule.max_temp={sched.max_temp}")

    need_choice("boxed_eos_policy", BOXED_EOS_POLICIES)
    need_choice("repetition_policy", REPETITION_POLICIES)
    need_int("repetition_window", 1)
    need_int("repetition_count", 1)
    if not _is_int(cfg.min_len) or cfg.min_len > cfg.max_response_len:
        bad("min_len", cfg.min_len,
            f"an integer <= max_depth*segment_len={cfg.max_response_len} (<= 0: off); "
            "a longer minimum can never be met")

    cand = cfg.fallback_candidates
    n = fallback.parse_boxed_ge_window(cand)
    if n is not None and n < 1:
        bad("fallback_candidates", cand, "boxed_ge_window_{n} with n >= 1")
    if n is None and cand not in fallback.CANDIDATE_POLICIES:
        bad("fallback_candidates", cand,
            f"one of {', '.join(fallback.CANDIDATE_POLICIES.names())} or boxed_ge_window_{{n}} (n >= 1)")
    if cfg.fallback_cut not in fallback.CUT_POLICIES:
        bad("fallback_cut", cfg.fallback_cut, f"one of {', '.join(fallback.CUT_POLICIES.names())}")
    need_int("fallback_window", -(2**62), "an integer (<= 0 means segment_len)")
    if cfg.require_aligned_window and cfg.fallback_window > 0 and cfg.fallback_window % cfg.segment_len:
        bad("fallback_window", cfg.fallback_window,
            f"a multiple of segment_len={cfg.segment_len} (or <= 0 for segment_len); set "
            "require_aligned_window=false to allow cuts inside segments")
    need_int("max_fallback_window", -(2**62), "an integer (<= 0: unlimited)")
    if cfg.fallback_cut == "min_logprob_token" and cfg.max_fallback_window > 0:
        bad("max_fallback_window", cfg.max_fallback_window,
            "<= 0 with fallback_cut=min_logprob_token (the cut is the argmin over the whole response)")
    need_int("fallback_block_size", 1)
    need_int("max_fallback_rounds", 1)

    need_positive("temperature")
    if not _is_num(cfg.top_p) or not 0 < cfg.top_p <= 1:
        bad("top_p", cfg.top_p, "a number in (0, 1]")
    need_int("top_k", -1, "-1 or 0 (off) or a positive integer")
    need_int("seed", 0)
    return cfg
