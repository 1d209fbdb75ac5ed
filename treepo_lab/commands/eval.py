"""`treepo-lab eval`: a model or checkpoint on the held-out split, with the prompts as training shows them."""
from __future__ import annotations

from treepo_lab.commands.base import Command, load, setup
from treepo_lab.commands.output import print_samples
from treepo_lab.train.progress import fmt


def run(own, overrides, raw):
    from treepo_lab.train.evaluate import evaluate
    from treepo_lab.train.progress import eval_progress

    cfg = load(own, overrides)
    s = setup(own, cfg)
    problems = [s.prompts.problem(p) for p in s.task.held_out()[: cfg.eval.n_problems]]
    with eval_progress(len(problems)) as bar:
        metrics, records = evaluate(s.engine, s.tokenizer, s.task, problems, cfg.eval, cfg.sampler, s.prompts.encode,
                                    s.decode, seed=cfg.seed, progress=bar.update,
                                    reward_timeout_s=cfg.trainer.reward_timeout_s)
    print_eval(s.model_dir, metrics, records)


def print_eval(model_dir, metrics: dict, records: list[dict]) -> None:
    print(f"model: {model_dir}")
    width = max(map(len, metrics), default=0)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {fmt(k, v)}")
    print_samples(records, 3)


COMMAND = Command(run, "evaluate a model or checkpoint on the held-out split",
                  "treepo-lab eval [checkpoint=<dir | run dir | MLflow run id>] [key=value ...]",
                  "e.g. treepo-lab eval checkpoint=runs/<run>/checkpoints/step-000060 eval.k=16 eval.temperature=1.0\n"
                  "     treepo-lab eval eval.sampler=tree eval.k=16 eval.temperature=1.0   (test-time tree sampling)",
                  own=("experiment", "checkpoint"))
