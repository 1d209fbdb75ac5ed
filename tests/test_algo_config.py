"""Validation of the algorithm configs (AdvantageConfig, LossConfig, RewardConfig)."""
import pytest
from omegaconf import OmegaConf

from treepo_lab.algo.config import AdvantageConfig, LossConfig, RewardConfig
from treepo_lab.algo.registries import needs_tree
from treepo_lab.config import load_config
from treepo_lab.registry import ConfigError


def test_defaults_are_valid_and_structured():
    for cls in (AdvantageConfig, LossConfig, RewardConfig):
        cls().validate()
        assert OmegaConf.to_object(OmegaConf.structured(cls)) == cls()


def test_names_are_checked_in_one_place():
    # the section's own validate checks values only; the registry names fail in treepo_lab/config.py
    AdvantageConfig(estimator="gae").validate()
    LossConfig(name="dpo").validate()
    for override, key in (("advantage.estimator=gae", "advantage.estimator"), ("loss.name=dpo", "loss.name")):
        with pytest.raises(ConfigError) as e:
            load_config("default", [override])
        assert e.value.key == key and "one of" in str(e.value)


@pytest.mark.parametrize("cfg, key", [
    (AdvantageConfig(aggregation="sum"), "advantage.aggregation"),
    (AdvantageConfig(segment_eta=1.5), "advantage.segment_eta"),
    (LossConfig(norm_horizon=0), "loss.norm_horizon"),
    (LossConfig(clip_low=1.0), "loss.clip_low"),
    (LossConfig(clip_high=-0.1), "loss.clip_high"),
    (LossConfig(loss_agg_mode="sum"), "loss.loss_agg_mode"),
    (LossConfig(kl_type="k2"), "loss.kl_type"),
    (LossConfig(kl_coef=-1.0), "loss.kl_coef"),
    (LossConfig(entropy_coef=-1.0), "loss.entropy_coef"),
    (RewardConfig(scale="1"), "reward.scale"),
    (RewardConfig(overlong_buffer=-1), "reward.overlong_buffer"),
    (RewardConfig(overlong_penalty_factor=-1.0), "reward.overlong_penalty_factor"),
])
def test_bad_values_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.key == key


def test_unquoted_01_in_yaml_gets_a_hint():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RewardConfig), OmegaConf.create("scale: 01")))
    with pytest.raises(ConfigError, match="quotes"):
        cfg.validate()


def test_cross_field_and_optional_values():
    with pytest.raises(ConfigError, match="max response length"):
        RewardConfig(overlong_buffer=128).validate(max_response_len=128)
    RewardConfig(overlong_buffer=64).validate(max_response_len=128)
    for c in (None, 1.0, 3.0):
        LossConfig(dual_clip_c=c).validate()
    assert not LossConfig(dual_clip_c=1.0).dual_clip_on and LossConfig().dual_clip_on
    assert needs_tree("spo") and not needs_tree("grpo")
