"""Issue 27: LoRA adapters (`model.lora.r > 0`, peft). Only the adapters train; tree packing stays exact with
them (packed vs flat gradients of the adapter weights); the HF engine samples from the adapted model (stored
log-probs = a recompute by it); a checkpoint holds the adapter and a merged HF directory that transformers
loads without peft (same logits); `resume` continues the adapter; bad settings are refused before a run."""
from __future__ import annotations

import random

import pytest
import torch
from test_packing import LOSS, TEMP, as_batch, chunks, minibatch_loss, random_trie_seqs, rel, tiny_llama
from test_trainer import FAST
from transformers import AutoModelForCausalLM

from treepo_lab.cli import main
from treepo_lab.config import load_config
from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.logprobs import sequence_stats
from treepo_lab.models.config import LoraConfig
from treepo_lab.models.lora import ADAPTER_DIR, add_adapters
from treepo_lab.registry import ConfigError
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.packing import forward_packed
from treepo_lab.train.trainer import Trainer
from treepo_lab.train.update import forward_leaves, leaf_logprobs

pytest.importorskip("peft")


def lora_cfg(ws_cache, *extra):
    return load_config("treepo_fixed_init", FAST + [f"warmstart.cache_dir={ws_cache}", "model.lora.r=4",
                                                    "model.lora.alpha=8", *extra])


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def trained(ws_cache, tmp_path_factory):
    """A 3-step LoRA run with a checkpoint at step 2 and 3: (trainer, weights before, its run dir)."""
    run_dir = tmp_path_factory.mktemp("lora_run")
    trainer = Trainer(lora_cfg(ws_cache, "trainer.save_every=2"), run_dir=run_dir)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit(progress=False)
    return trainer, before, run_dir


def test_only_the_adapters_train(trained):
    trainer, before, _ = trained
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n, _ in trainer.model.named_parameters() if "lora_" in n}
    assert changed and changed <= adapters, sorted(changed - adapters)[:3]
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == adapters
    assert all(p.requires_grad for g in trainer.optimizer.param_groups for p in g["params"])  # the adapters alone


def test_tree_packing_is_exact_with_adapters():
    """The loss's gradient of every adapter weight, from one packed forward per pack vs right-padded rows."""
    vocab = 24
    model = add_adapters(tiny_llama(vocab, torch.float32), LoraConfig(r=4, alpha=8.0))
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at 0 (A would get no gradient): a trained adapter's values
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    batch = as_batch(random_trie_seqs(random.Random(1), vocab))
    g = torch.Generator().manual_seed(0)
    adv = [torch.randn(len(r), generator=g) for r in batch.responses]
    for budget in (None, 20):
        flat, tree = chunks(batch, budget)
        with torch.no_grad():
            old_f = leaf_logprobs(model, batch, flat, TEMP)
            old_t = leaf_logprobs(model, batch, tree, TEMP, forward_packed)
        grads = []
        for parts, forward, old in ((flat, forward_leaves, old_f), (tree, forward_packed, old_t)):
            model.zero_grad(set_to_none=True)
            minibatch_loss(model, batch, parts, forward, old, adv, old, LOSS).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert grads[0].keys() and all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
        worst = max(rel(grads[1][n], grads[0][n]) for n in grads[0])
        assert worst <= 1e-4, (budget, worst)


def test_the_engine_samples_from_the_adapted_model(trained):
    trainer, _, _ = trained
    prompts = [trainer.prompts.encode(p.prompt) for p in trainer.task.held_out()[:2]]
    trees = trainer.sampler.rollout(prompts, seed=1).trees
    rows = [(t.prompt_ids, t.response_tokens(lf), t.response_logprobs(lf)) for t in trees for lf in t.leaves]
    with torch.no_grad():
        again, _ = sequence_stats(trainer.model, [p for p, _, _ in rows], [r for _, r, _ in rows],
                                  SamplingParams(), pad_token_id=trainer.tokenizer.pad_token_id)
    assert max((torch.tensor(s) - a).abs().max().item() for (_, _, s), a in zip(rows, again) if len(s)) < 1e-4


def test_a_checkpoint_holds_the_adapter_and_a_merged_model_that_loads_without_peft(trained):
    trainer, _, run_dir = trained
    last = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert (last / ADAPTER_DIR / "adapter_model.safetensors").is_file() and (last / ADAPTER_DIR / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(last / "model"))  # plain transformers
    assert "Peft" not in type(merged).__name__
    ids = torch.tensor([trainer.prompts.encode(trainer.task.held_out()[0].prompt)])
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-4


def test_resume_continues_the_adapter(trained, ws_cache):
    trainer, _, run_dir = trained
    step2 = run_dir / "checkpoints" / "step-000002"
    resumed = Trainer(lora_cfg(ws_cache, "trainer.save_every=2"), resume_from=step2)
    assert resumed.step == 2
    first = Trainer(lora_cfg(ws_cache))  # fresh adapters: B = 0
    assert any(not torch.equal(a, b) for a, b in zip(adapter_weights(resumed.model).values(),
                                                      adapter_weights(first.model).values()))
    resumed.fit(progress=False)  # the third step from step 2's adapter and optimizer: step 3's weights again
    for (n, a), b in zip(adapter_weights(resumed.model).items(), adapter_weights(trainer.model).values()):
        assert torch.allclose(a, b, atol=1e-6), n


@pytest.mark.parametrize("override,line", [
    ("model.lora.r=-1", "model.lora.r=-1 is not allowed: an integer >= 0"),
    ("model.lora.dropout=1.0", "model.lora.dropout=1.0 is not allowed: a number in [0, 1)"),
    ("model.lora.target_modules=[]", "model.lora.target_modules=[] is not allowed: a non-empty list"),
    ("model.lora.target_modules=[q_proj,qkv]", "model.lora.target_modules=['q_proj', 'qkv'] is not allowed: names of "
                                               "the model's linear layers (down_proj, gate_proj, k_proj, lm_head"),
    ("engine.name=vllm", "model.lora.r=4 is not allowed: 0 with engine.name=vllm"),
])
def test_bad_lora_settings_are_one_line_before_any_run(ws_cache, tmp_path, monkeypatch, capsys, override, line):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["train", "experiment=treepo_fixed_init", *FAST, f"warmstart.cache_dir={ws_cache}", "model.lora.r=4",
                 override, "tracking.enabled=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith(f"treepo-lab train: {line}"), err
    assert list(tmp_path.iterdir()) == []  # no store, no run folder


def test_lora_off_by_default_and_checked_alone():
    assert load_config("default").model.lora.r == 0
    with pytest.raises(ConfigError, match="model.lora.alpha"):
        LoraConfig(r=2, alpha=0).validate()
