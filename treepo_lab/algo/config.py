"""Configuration of the algorithm: advantage estimator, policy loss, reward shaping.

Names follow the TreePO paper's released config; the official key is given in each comment. Every value is
checked by `validate()` (a `ConfigError` names the key, the value and what is allowed) before any
compute starts; the names (estimator, loss) are checked against their registries in one place,
treepo_lab/config.py. Fields that do not apply to the chosen estimator are ignored, not rejected, so
one sweep can vary them freely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from treepo_lab.registry import ConfigError

AGGREGATIONS = ("average", "group_size")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k3", "low_var_kl")
REWARD_SCALES = ("pm1", "01")


@dataclass
class AdvantageConfig:
    # grpo | rloo | reinforce_pp_baseline | treepo | tree_segment | spo (`algorithm.adv_estimator`;
    # treepo = tree_reinforce_plus_plus_baseline, tree_segment = tree_segment_reinforce_plus_plus_baseline);
    # the other tree methods (treerl, treerpo, spo_tree, ...) are registered in treepo_lab/methods/
    estimator: str = "treepo"
    # the knobs of the chosen estimator, as registered with it (checked in treepo_lab/config.py), e.g.
    # {sqrt_leaves: false} for treerl; an estimator without knobs takes none
    params: dict[str, Any] = field(default_factory=dict)
    # grpo only: divide by the group std (`algorithm.norm_adv_by_std_in_grpo`); false = Dr.GRPO
    norm_by_std: bool = True
    # treepo only: how the per-level advantages are combined (`adv_estimator_param.adv_weight_strategy`):
    # average = mean over levels (paper Eq. 5, released); group_size = weighted by subgroup size (Eq. 6)
    aggregation: str = "average"
    # treepo only: skip subgroups whose rewards are all equal, at depth >= 1 (`subtree_std_ds`, Eq. 7)
    remove_zero_std_subgroups: bool = False
    # treepo only: leave out the prompt-level (root) group (paper ablation; not in the official code)
    drop_root: bool = False
    # treepo only: D, the node ids per path that form subgroup keys (`actor.tree_subgroup_opt`); levels
    # 0..min(D, deepest path)-1 are used, so D=1 means the root group only. <= 0: unlimited
    max_subgroup_depth: int = 0
    # tree_segment only: eta, the discount on the parent value V(node) - eta^(n-j) V(parent)
    # (`adv_estimator_param.segtree_adv_eta`); <= 0: off
    segment_eta: float = -1.0
    # batch-global token whitening; null = the estimator's own semantics
    # (on for reinforce_pp_baseline, treepo, tree_segment; off for grpo, rloo, spo)
    whiten: bool | None = None

    def validate(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError("advantage.aggregation", self.aggregation, f"one of {', '.join(AGGREGATIONS)}")
        if not isinstance(self.max_subgroup_depth, int):
            raise ConfigError("advantage.max_subgroup_depth", self.max_subgroup_depth, "an integer (<= 0: unlimited)")
        if self.segment_eta > 1:
            raise ConfigError("advantage.segment_eta", self.segment_eta, "a number in (0, 1], or <= 0 for off")
        if self.whiten not in (None, True, False):
            raise ConfigError("advantage.whiten", self.whiten, "true, false or null (estimator default)")


@dataclass
class LossConfig:
    name: str = "ppo"  # policy loss, by registered name
    clip_low: float = 0.2  # eps_low: ratio floor 1 - eps_low (`clip_ratio_low`)
    clip_high: float = 0.28  # eps_high: ratio ceiling 1 + eps_high, "clip-higher" (`clip_ratio_high`)
    # dual clip c: for A < 0 the per-token loss is capped at -A*c (`clip_ratio_c`); null or <= 1: off
    dual_clip_c: float | None = 10.0
    # token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm (`loss_agg_mode`)
    loss_agg_mode: str = "token-mean"
    # horizon H of seq-mean-token-sum-norm: loss = sum / (n_seqs * H); null = the max response length
    # d*l (sampler.max_depth * sampler.segment_len), a constant (Dr.GRPO) normaliser
    norm_horizon: int | None = None
    kl_coef: float = 0.0  # KL-to-reference loss weight (`kl_loss_coef`; use_kl_loss = kl_coef > 0)
    kl_type: str = "low_var_kl"  # k1 | k3 | low_var_kl (k3 and low_var_kl are the same estimator)
    entropy_coef: float = 0.0  # entropy bonus weight (`entropy_coeff`)

    def validate(self) -> None:
        if not 0 <= self.clip_low < 1:
            raise ConfigError("loss.clip_low", self.clip_low, "a number in [0, 1)")
        if not self.clip_high >= 0:
            raise ConfigError("loss.clip_high", self.clip_high, "a number >= 0")
        if self.dual_clip_c is not None and not isinstance(self.dual_clip_c, (int, float)):
            raise ConfigError("loss.dual_clip_c", self.dual_clip_c, "a number (> 1 on, <= 1 off) or null")
        if self.norm_horizon is not None and (not isinstance(self.norm_horizon, int) or self.norm_horizon < 1):
            raise ConfigError("loss.norm_horizon", self.norm_horizon, "an integer >= 1, or null for d*l")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ConfigError("loss.loss_agg_mode", self.loss_agg_mode, f"one of {', '.join(LOSS_AGG_MODES)}")
        if self.kl_coef < 0:
            raise ConfigError("loss.kl_coef", self.kl_coef, "a number >= 0")
        if self.kl_type not in KL_TYPES:
            raise ConfigError("loss.kl_type", self.kl_type, f"one of {', '.join(KL_TYPES)}")
        if self.entropy_coef < 0:
            raise ConfigError("loss.entropy_coef", self.entropy_coef, "a number >= 0")

    @property
    def dual_clip_on(self) -> bool:
        return self.dual_clip_c is not None and self.dual_clip_c > 1


@dataclass
class RewardConfig:
    # pm1: +1 correct / -1 wrong (released, DAPO reward manager); 01: 1 / 0. Quote "01" in YAML.
    scale: str = "pm1"
    # DAPO overlong penalty: buffer length in tokens before the max response length (0: off)
    # (`overlong_buffer.len`; released 512 of 7168)
    overlong_buffer: int = 0
    overlong_penalty_factor: float = 1.0  # (`overlong_buffer.penalty_factor`)
    # DAPO dynamic sampling: drop prompts whose leaves are all correct or all wrong
    # (`algorithm.filter_groups.enable`, metric acc)
    dynamic_sampling: bool = True
    # generation rounds per training step, the first included (`filter_groups.max_num_gen_batches`);
    # <= 0: unlimited. When it runs out the step trains on the prompts kept so far.
    max_resample_rounds: int = 10

    def validate(self, max_response_len: int | None = None) -> None:
        if self.scale not in REWARD_SCALES:
            hint = " (in YAML write '01' with quotes: a bare 01 reads as the integer 1)" if str(self.scale) == "1" else ""
            raise ConfigError("reward.scale", self.scale, f"one of {', '.join(REWARD_SCALES)}{hint}")
        if self.overlong_buffer < 0:
            raise ConfigError("reward.overlong_buffer", self.overlong_buffer, "an integer >= 0 (0: off)")
        if max_response_len is not None and self.overlong_buffer >= max_response_len:
            raise ConfigError("reward.overlong_buffer", self.overlong_buffer,
                              f"an integer below the max response length {max_response_len} (0: off)")
        if self.overlong_penalty_factor < 0:
            raise ConfigError("reward.overlong_penalty_factor", self.overlong_penalty_factor, "a number >= 0")
        if not isinstance(self.max_resample_rounds, int):
            raise ConfigError("reward.max_resample_rounds", self.max_resample_rounds, "an integer (<= 0: unlimited)")
