"""The PPO policy loss against hand-computed values: clip cases, aggregation modes, KL, entropy."""
import math

import pytest
import torch

from treepo_lab.algo.config import LossConfig
from treepo_lab.algo.loss import POLICY_LOSSES, agg_loss, kl_penalty, masked_mean, ppo_loss

torch.set_num_threads(1)


def one_token(ratio, adv, **kw):
    """Loss and metrics of a single token with the given ratio and advantage (default eps 0.2/0.28, c 10)."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss, m = ppo_loss(logp, old, torch.tensor([[adv]], dtype=torch.float64), torch.ones(1, 1), LossConfig(**kw))
    loss.backward()
    return loss.item(), logp.grad.item(), m


@pytest.mark.parametrize("ratio, adv, loss, grad, clip, lower", [
    (1.1, 1.0, -1.1, -1.1, 0, 0),  # inside the trust region: -A r, d/dlogp = -A r
    (0.5, 1.0, -0.5, -0.5, 0, 0),  # A > 0, ratio low: not clipped (pessimistic side)
    (1.5, 2.0, -2.0 * 1.28, 0.0, 1, 0),  # A > 0, ratio above 1 + eps_high: clipped, no gradient
    (0.5, -1.0, 0.8, 0.0, 1, 0),  # A < 0, ratio below 1 - eps_low: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5, 0, 0),  # A < 0, ratio high but below c: not clipped
    (20.0, -1.0, 10.0, 0.0, 0, 1),  # A < 0, huge ratio: dual clip caps the loss at -A c
    (20.0, -0.5, 5.0, 0.0, 0, 1),
])
def test_clip_cases(ratio, adv, loss, grad, clip, lower):
    got, g, m = one_token(ratio, adv)
    assert got == pytest.approx(loss)
    assert g == pytest.approx(grad, abs=1e-12)
    assert m["actor/pg_clipfrac"] == clip and m["actor/pg_clipfrac_lower"] == lower
    assert m["actor/pg_loss"] == pytest.approx(loss)
    assert m["actor/ppo_kl"] == pytest.approx(-math.log(ratio))


@pytest.mark.parametrize("c", [None, 1.0, 0.5])
def test_dual_clip_off(c):
    got, g, m = one_token(20.0, -1.0, dual_clip_c=c)
    assert got == pytest.approx(20.0) and g == pytest.approx(20.0)
    assert m["actor/pg_clipfrac_lower"] == 0


def test_asymmetric_clip_values():
    assert one_token(1.25, 1.0)[0] == pytest.approx(-1.25)  # inside 1 + 0.28
    assert one_token(1.25, 1.0, clip_high=0.2)[0] == pytest.approx(-1.2)  # symmetric PPO clips it
    assert one_token(0.7, -1.0, clip_low=0.4)[0] == pytest.approx(0.7)


LOSS = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0], [100.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the third row is padding


@pytest.mark.parametrize("mode, horizon, expected", [
    ("token-mean", None, 7 / 3),
    ("seq-mean-token-sum", None, (3 + 4) / 2),
    ("seq-mean-token-mean", None, (1.5 + 4) / 2),
    ("seq-mean-token-sum-norm", 3, 7 / (2 * 3)),  # n_seqs * horizon
    ("seq-mean-token-sum-norm", 10, 7 / (2 * 10)),  # the horizon, not the padded width
])
def test_agg_modes(mode, horizon, expected):
    assert agg_loss(LOSS, MASK, mode, horizon).item() == pytest.approx(expected)
    assert agg_loss(LOSS[:2], MASK[:2].bool(), mode, horizon).item() == pytest.approx(expected)


def test_agg_empty_mask_is_zero_not_nan():
    for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert agg_loss(LOSS, torch.zeros_like(MASK), mode, horizon=5).item() == 0.0
    with pytest.raises(ValueError):
        agg_loss(LOSS, MASK, "sum")


def test_norm_mode_needs_a_horizon():
    with pytest.raises(ValueError, match="horizon"):  # never the padded width silently
        agg_loss(LOSS, MASK, "seq-mean-token-sum-norm")


def batch():
    ratio = torch.tensor([[1.1, 1.5, 1.0], [0.5, 20.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 2.0, 9.0], [-1.0, -1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    per_token = torch.tensor([[-1.1, -2.56, 0.0], [0.8, 10.0, 0.0]], dtype=torch.float64)
    return ratio.log(), torch.zeros_like(ratio), adv, mask, per_token


PER_MODE = {"token-mean": (-1.1 - 2.56 + 0.8 + 10) / 4, "seq-mean-token-sum": (-3.66 + 10.8) / 2,
            "seq-mean-token-mean": (-1.83 + 5.4) / 2, "seq-mean-token-sum-norm": (-3.66 + 10.8) / (2 * 7)}


@pytest.mark.parametrize("mode", list(PER_MODE))
def test_loss_uses_agg_mode(mode):
    logp, old, adv, mask, per_token = batch()
    loss, m = ppo_loss(logp, old, adv, mask, LossConfig(loss_agg_mode=mode), max_response_len=7)
    assert loss.item() == pytest.approx(PER_MODE[mode])
    assert m["actor/pg_clipfrac"] == pytest.approx(2 / 4) and m["actor/pg_clipfrac_lower"] == pytest.approx(1 / 4)


@pytest.mark.parametrize("mode", list(PER_MODE))
def test_norm_horizon(mode):
    """loss.norm_horizon sets H of seq-mean-token-sum-norm (None: the max response length passed in)
    and changes no other mode."""
    logp, old, adv, mask, _ = batch()
    loss, _ = ppo_loss(logp, old, adv, mask, LossConfig(loss_agg_mode=mode, norm_horizon=8), max_response_len=7)
    expected = (-3.66 + 10.8) / (2 * 8) if mode == "seq-mean-token-sum-norm" else PER_MODE[mode]
    assert loss.item() == pytest.approx(expected)
    if mode == "seq-mean-token-sum-norm":
        with pytest.raises(ValueError, match="horizon"):
            ppo_loss(logp, old, adv, mask, LossConfig(loss_agg_mode=mode))


def test_kl_penalties():
    logp = torch.tensor([-1.0, -2.0, -30.0])
    ref = torch.tensor([-0.5, -2.0, -1.0])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), torch.tensor([-0.5, 0.0, -29.0]))
    k3 = torch.tensor([math.exp(0.5) - 0.5 - 1, 0.0, 10.0])  # exp(29) - 29 - 1 is clamped to 10
    assert torch.allclose(kl_penalty(logp, ref, "k3"), k3)
    assert torch.allclose(kl_penalty(logp, ref, "low_var_kl"), k3)
    extreme = kl_penalty(torch.tensor([-200.0, 0.0]), torch.tensor([0.0, -200.0]), "k3")
    assert torch.isfinite(extreme).all() and (extreme == 10.0).all()  # inner clamp keeps exp finite
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k2")


# ref - logp per token (the third column is masked out); the KL terms by hand:
# k1 = logp - ref = -d, k3 = exp(d) - d - 1
KL_D = [[-0.3, 0.5, 7.0], [0.1, -0.2, 7.0]]
KL_BY_HAND = {"k1": (0.3 - 0.5 - 0.1 + 0.2) / 4,
              "k3": sum(math.exp(d) - d - 1 for d in (-0.3, 0.5, 0.1, -0.2)) / 4}
KL_BY_HAND["low_var_kl"] = KL_BY_HAND["k3"]


@pytest.mark.parametrize("kl_type", ["k1", "k3", "low_var_kl"])
def test_kl_loss_term(kl_type):
    logp, old, adv, mask, per_token = batch()
    ref = logp + torch.tensor(KL_D, dtype=torch.float64)
    loss, m = ppo_loss(logp, old, adv, mask, LossConfig(kl_coef=0.5, kl_type=kl_type), ref_logp=ref)
    assert m["actor/kl_loss"] == pytest.approx(KL_BY_HAND[kl_type], rel=1e-9)
    assert loss.item() == pytest.approx(PER_MODE["token-mean"] + 0.5 * KL_BY_HAND[kl_type], rel=1e-9)
    with pytest.raises(ValueError, match="reference"):
        ppo_loss(logp, old, adv, mask, LossConfig(kl_coef=0.5))
    loss0, m0 = ppo_loss(logp, old, adv, mask, LossConfig(kl_type=kl_type), ref_logp=ref)  # logged, not optimised
    assert m0["actor/kl_loss"] == pytest.approx(KL_BY_HAND[kl_type], rel=1e-9)
    assert loss0.item() == pytest.approx(PER_MODE["token-mean"])


def test_entropy_bonus():
    logp, old, adv, mask, per_token = batch()
    ent = torch.tensor([[1.0, 2.0, 50.0], [3.0, 4.0, 50.0]], dtype=torch.float64)
    loss, m = ppo_loss(logp, old, adv, mask, LossConfig(entropy_coef=0.1), entropy=ent)
    assert m["actor/entropy"] == pytest.approx(2.5)
    assert loss.item() == pytest.approx(masked_mean(per_token, mask).item() - 0.1 * 2.5)
    loss_s, _ = ppo_loss(logp, old, adv, mask, LossConfig(entropy_coef=0.1, loss_agg_mode="seq-mean-token-sum"),
                         entropy=ent)
    assert loss_s.item() == pytest.approx((-3.66 + 10.8) / 2 - 0.1 * (3 + 7) / 2)
    with pytest.raises(ValueError, match="entropy"):
        ppo_loss(logp, old, adv, mask, LossConfig(entropy_coef=0.1))
    _, m0 = ppo_loss(logp, old, adv, mask, LossConfig())
    assert "actor/entropy" not in m0 and "actor/kl_loss" not in m0


def test_masked_tokens_have_no_gradient():
    logp, old, adv, mask, _ = batch()
    logp = logp.clone().requires_grad_(True)
    loss, _ = ppo_loss(logp, old, adv, mask, LossConfig())
    loss.backward()
    assert (logp.grad[:, 2] == 0).all()


def test_registered():
    assert POLICY_LOSSES.get("ppo") is ppo_loss
