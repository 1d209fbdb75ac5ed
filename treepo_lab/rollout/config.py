"""Sampler configuration: every knob of the segment-wise tree sampler and the sequential baseline.

Names follow TREEPO_SPEC.md §7.1 without the `tree_` prefix; the official name is given in each
comment. Validation runs before any compute (see `validate`).
"""
from __future__ import annotations

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
    # sampling (the distribution log-probs are reported under)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0

    @property
    def max_response_len(self) -> int:
        return self.max_depth * self.segment_len
