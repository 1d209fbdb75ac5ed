"""The PPO update (train/update.py) on a real tiny Llama: old log-probs, the first ratio, micro-batch
invariance in every loss_agg_mode, and a two-leaf update against a loss written out by hand."""
from __future__ import annotations

import copy

import pytest
import torch

from treepo_lab.algo.config import LOSS_AGG_MODES, LossConfig
from treepo_lab.algo.loss import ppo_loss
from treepo_lab.engines.hf import HFEngine
from treepo_lab.models.config import TinyModelConfig
from treepo_lab.models.tiny import build_tiny_model
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.train.update import LeafBatch, first_epoch, leaf_logprobs, plan_minibatches, ppo_update

TOK = build_char_tokenizer()
PAD = TOK.pad_token_id
PROMPTS = ["Compute 3+4. ", "What is 12*2? ", "7-5 = "]


@pytest.fixture(scope="module")
def model():
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return build_tiny_model(cfg, TOK).eval()


def leaves(n_per_prompt=3, lengths=(5, 9, 2, 7)):
    """A LeafBatch of fixed, unequal responses (so padding and micro-batch cuts matter)."""
    prompts, responses, groups = [], [], []
    k = 0
    for g, text in enumerate(PROMPTS):
        p = TOK(text)["input_ids"]
        for _ in range(n_per_prompt):
            n = lengths[k % len(lengths)]
            responses.append(TOK(("0123456789+-=" * 3)[k: k + n], add_special_tokens=False)["input_ids"])
            prompts.append(p)
            groups.append(g)
            k += 1
    return LeafBatch(prompts, responses, groups, PAD)


def token_advantages(batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(len(r), generator=gen) for r in batch.responses]


def one_minibatch_plan(batch, micro):
    rows = list(range(len(batch)))
    return [[[[rows[s: s + micro] for s in range(0, len(rows), micro)]]]]  # one epoch, mini-batch, share


# log-probs are float32 whatever the model dtype (engines/logprobs.py), hence rtol 1e-5: a wrong
# weighting or normaliser is off by a factor, not in the 6th digit

def update(model, batch, plan, adv, cfg, temperature=1.0, lr=1.0, loss_fn=ppo_loss):
    """Apply ppo_update with plain SGD; return the parameter change of every tensor."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    old = leaf_logprobs(model, batch, first_epoch(plan), temperature)
    ppo_update(model, torch.optim.SGD(model.parameters(), lr=lr), batch, plan, old, adv, loss_fn, cfg,
               temperature=temperature, max_response_len=16, grad_clip=1e9)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_old_logprobs_equal_the_engines_sampling_logprobs(model):
    engine = HFEngine(model, TOK.eos_token_id, PAD)
    cfg = SamplerConfig(width=4, max_depth=3, segment_len=5, temperature=0.7)
    result = build_sampler(cfg, engine, lambda ids: TOK.decode(ids), TOK.eos_token_id).rollout(
        [TOK(p)["input_ids"] for p in PROMPTS[:2]], seed=3)
    batch = LeafBatch.from_trees(result.trees, PAD)
    sampled = [torch.tensor([x for nid in lf.node_path for x in t.nodes[nid].logprobs])
               for t in result.trees for lf in t.leaves]
    assert len(batch) == 8 and all(len(s) == len(r) for s, r in zip(sampled, batch.responses))
    old = leaf_logprobs(model, batch, [list(range(s, min(s + 3, len(batch)))) for s in range(0, len(batch), 3)], 0.7)
    for o, s in zip(old, sampled):
        torch.testing.assert_close(o, s, atol=2e-5, rtol=0)
    # at another temperature they differ: the check can tell
    other = leaf_logprobs(model, batch, [list(range(len(batch)))], 1.0)
    assert max((o - s).abs().max().item() for o, s in zip(other, sampled)) > 1e-2


def test_first_minibatch_of_first_epoch_has_ratio_exactly_one(model):
    batch = leaves()
    gen = torch.Generator().manual_seed(0)
    plan = plan_minibatches(batch, epochs=2, prompts_per_minibatch=2, micro_batch_size=2, generator=gen)
    assert len(plan) == 2 and [len(e) for e in plan] == [2, 2]
    log_ratios = []

    def recording(logp, old, adv, mask, cfg, **kw):
        log_ratios.append((logp - old)[mask.bool()].detach())
        return ppo_loss(logp, old, adv, mask, cfg, **kw)

    update(copy.deepcopy(model), batch, plan, token_advantages(batch), LossConfig(), lr=0.5, loss_fn=recording)
    first = len(plan[0][0][0])  # the micro-batches of the first mini-batch (one share: one process)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in log_ratios[:first])  # bit-exact on-policy
    assert any(r.abs().max() > 0 for r in log_ratios[first:])  # after an optimizer step: off-policy


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_gradient_does_not_depend_on_micro_batch_size(model, mode):
    batch = leaves()
    adv = token_advantages(batch, seed=1)
    cfg = LossConfig(loss_agg_mode=mode, entropy_coef=0.01)
    whole = update(copy.deepcopy(model).double(), batch, one_minibatch_plan(batch, len(batch)), adv, cfg)
    for micro in (1, 4):
        cut = update(copy.deepcopy(model).double(), batch, one_minibatch_plan(batch, micro), adv, cfg)
        for name, d in whole.items():
            torch.testing.assert_close(cut[name], d, rtol=1e-5, atol=1e-6, msg=f"{mode}, micro {micro}: {name}")
    assert any(d.abs().max() > 0 for d in whole.values())


def hand_written_step(model, batch, adv, temperature, mode):
    """The update written out for a batch whose ratio is 1: pg loss = agg over tokens of -A * ratio."""
    per_leaf = []
    for p, r, a in zip(batch.prompts, batch.responses, adv):
        ids = torch.tensor([p + r])
        logits = model(input_ids=ids).logits[0, len(p) - 1: len(p) + len(r) - 1] / temperature
        lp = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        per_leaf.append(-a.double() * torch.exp(lp - lp.detach()))
    if mode == "token-mean":
        loss = torch.cat(per_leaf).sum() / sum(len(x) for x in per_leaf)
    else:  # seq-mean-token-mean
        loss = sum(x.mean() for x in per_leaf) / len(per_leaf)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_two_leaf_update_equals_the_hand_written_loss(model, mode):
    batch = LeafBatch([TOK("2+2=")["input_ids"], TOK("9-3=")["input_ids"]],
                      [TOK("4 ok", add_special_tokens=False)["input_ids"], TOK("6", add_special_tokens=False)["input_ids"]],
                      [0, 0], PAD)
    adv = [torch.tensor([1.5, 1.5, 1.5, 1.5]), torch.tensor([-0.5])]
    got = update(copy.deepcopy(model).double(), batch, one_minibatch_plan(batch, 2), adv,
                 LossConfig(loss_agg_mode=mode), temperature=0.8)
    want = hand_written_step(copy.deepcopy(model).double(), batch, adv, 0.8, mode)
    for name, d in want.items():
        torch.testing.assert_close(got[name], d, rtol=1e-5, atol=1e-6, msg=name)
    assert any(d.abs().max() > 0 for d in want.values())
