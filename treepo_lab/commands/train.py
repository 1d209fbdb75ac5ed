"""`treepo-lab train`: one run (or, with trainer.nproc > 1, this process launches its ranks and waits), then
the summary: accuracy before -> after, compute, samples, where the run and its checkpoint are."""
from __future__ import annotations

from pathlib import Path

from treepo_lab.commands.base import Command, load
from treepo_lab.commands.output import UI_URL, print_samples
from treepo_lab.train.progress import fmt


def run(own, overrides, raw, default="default"):
    from treepo_lab.train import launch
    from treepo_lab.train.run import run_experiment

    cfg = load(own, overrides, default)
    if cfg.trainer.nproc > 1 and not launch.launched():  # this process starts the ranks and waits
        from treepo_lab.train.run import check_run_name

        check_run_name(cfg)  # refused here, before any rank starts
        launch.launch(cfg, ["train", *raw])
        return
    trainer, history = run_experiment(cfg)
    if trainer is not None and trainer.world.is_main:  # None: the ranks ran it (trainer.nproc > 1)
        print_summary(trainer, history)


def print_summary(trainer, history: list[dict]) -> None:
    """After a run: accuracy before -> after, compute, samples, and where the run and checkpoint are."""
    evals = [h for h in history if "eval/accuracy" in h]
    if evals:
        first, last = evals[0], evals[-1]
        print(f"held-out accuracy: {fmt('eval/accuracy', first['eval/accuracy'])} (step {int(first['train/step'])})"
              f" -> {fmt('eval/accuracy', last['eval/accuracy'])} (step {int(last['train/step'])})"
              f" on {fmt('eval/n_problems', last['eval/n_problems'])} problems")
    steps = [h for h in history if "cumulative/rollout/decoded_tokens" in h]
    if steps:
        s = steps[-1]
        line = f"decoded tokens: {fmt('tokens', s['cumulative/rollout/decoded_tokens'])}"
        for key, against in (("cumulative/rollout/token_saving", "independent sampling"),
                             ("cumulative/rollout/token_saving_vs_sequential", "the sequential sampler")):
            if key in s:
                line += f", token saving {fmt(key, s[key])} vs {against}"
        print(line + f", wall {fmt('time/wall_s', s['time/wall_s'])} s")
    if trainer.last_eval_records:
        print_samples(trainer.last_eval_records, 3)
    skipped, steps_done = getattr(trainer, "skipped_steps", 0), trainer.step
    if skipped:
        print(f"warning: {skipped} of {steps_done} steps skipped: every prompt was all-right or all-wrong in every "
              f"DAPO round (nothing learned)" + ("; no step learned anything: raise reward.max_resample_rounds, "
                                                "trainer.prompts_per_step or sampler.width" if skipped == steps_done else ""))
    tracker = trainer.tracker
    if tracker.run_id:
        print(f"MLflow experiment {tracker.experiment_name!r}, run {tracker.run_name} ({tracker.run_id}) in "
              f"{tracker.tracking_uri}")
        ui = "" if tracker.tracking_uri.startswith("http") else "treepo-lab ui, then "
        print(f"  open it: {ui}{tracker.run_url(UI_URL)}")
    if trainer.run_dir:
        ckpts = sorted((Path(trainer.run_dir) / "checkpoints").glob("step-*"))
        print(f"checkpoint: {ckpts[-1] if ckpts else Path(trainer.run_dir) / 'checkpoints'}")


COMMAND = Command(run, "train an experiment, log it to MLflow, write checkpoints",
                  "treepo-lab train [experiment=<name>] [key=value ...]",
                  "e.g. treepo-lab train experiment=grpo trainer.steps=100 seed=1\n"
                  "     treepo-lab train experiment=seg_4x32 tracking.experiment_name=segments")
