"""`treepo-lab`: the command line. Every command takes Hydra overrides (key=value, +key=value, ...).

A user mistake (unknown experiment, bad override or value, missing file) prints one readable line and a
hint, and exits with status 2; a bug still shows its traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

USAGE = """usage: treepo-lab <command> [experiment=<name>] [key=value ...]

commands:
  demo       warm-start the embedded model, train TreePO on it for a few minutes, log to MLflow
  list       the registered experiments (experiments/*.yaml) with one-line descriptions
  show       the resolved config of an experiment:  show experiment=treepo_fixed_init sampler.width=8
  train      train an experiment:  train experiment=grpo trainer.steps=100 seed=1
  warmstart  build (or reuse from the cache) the warm-started embedded model:  warmstart warmstart.steps=800
  eval       evaluate a model or checkpoint on the held-out split:
             eval checkpoint=runs/<run>/checkpoints/step-000060 eval.k=16 eval.temperature=1.0
  rollout    sample trees and write them as JSON:  rollout n_prompts=4 out=trees.json sampler.width=8
  resume     continue a run from its latest checkpoint:  resume <MLflow run id | run dir | checkpoint dir>
  report     comparison report (Markdown, HTML, PNG + PDF):  report --sweep NAME | --experiment NAME | --runs ID ...
  export     metric histories in long format:  export --experiment NAME --format csv|parquet [--out FILE]
  figures    paper-style figures and tables:  figures fig1 [--sweep NAME | --runs ID ...] [--run-missing]

Overrides use Hydra's grammar (sampler.width=8, model.path=Qwen/Qwen2.5-0.5B, ~key, +key=value).
Runs log to MLflow (default sqlite:///mlflow.db here; see README); checkpoints go to runs/<run name>/."""

OWN_KEYS = ("experiment", "checkpoint", "out", "n_prompts")


class UserError(Exception):
    """A mistake in what the user typed or pointed at: one line, no traceback."""


def _split(args: list[str]) -> tuple[dict[str, str], list[str]]:
    own, overrides = {}, []
    for a in args:
        key = a.split("=", 1)[0]
        if "=" in a and key in OWN_KEYS:
            own[key] = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise UserError(f"unknown option {a!r}; options are written key=value (see treepo-lab --help)")
        else:
            overrides.append(a)
    return own, overrides


def _load(own: dict, overrides: list[str], default: str = "default"):
    from treepo_lab.config import load_config

    return load_config(own.get("experiment", default), overrides)


def cmd_list(args):
    from treepo_lab.config import list_experiments

    exps = list_experiments()
    width = max(map(len, exps), default=0)
    for name, desc in exps.items():
        print(f"{name:<{width}}  {desc}")


def cmd_show(args):
    from treepo_lab.config import to_yaml

    own, overrides = _split(args)
    print(to_yaml(_load(own, overrides)), end="")


def cmd_train(args):
    from treepo_lab.train.run import run_experiment

    own, overrides = _split(args)
    cfg = _load(own, overrides)
    trainer, history = run_experiment(cfg)
    _summary(trainer, history)


def cmd_resume(args):
    from treepo_lab.train.run import resume

    if not args or "=" in args[0]:
        raise UserError("resume needs a run id, run directory or checkpoint: treepo-lab resume <ref> [key=value ...]")
    trainer, history = resume(args[0], args[1:])
    _summary(trainer, history)


def cmd_warmstart(args, default="default"):
    from treepo_lab.config import warmstart_config
    from treepo_lab.models.warmstart import warmstart

    own, overrides = _split(args)
    cfg = _load(own, overrides, default)
    if cfg.model.path is not None:
        return
    path = warmstart(warmstart_config(cfg))
    info = json.loads((path / "warmstart.json").read_text())
    print(f"warm-started model: {path}")
    for k in ("train_s", "greedy_accuracy", "mixed_fraction_16", "sample_accuracy_t1", "eval_problems"):
        if k in info:
            print(f"  {k}: {info[k]}")


def _model_dir(own: dict, cfg) -> str:
    from treepo_lab.models.load import resolve_model
    from treepo_lab.train.run import find_checkpoint

    if "checkpoint" in own:
        return str(find_checkpoint(own["checkpoint"]) / "model")
    from treepo_lab.config import warmstart_config

    return resolve_model(cfg.model, warmstart_config(cfg))


def _engine_for(cfg, model_dir):
    from treepo_lab.engines.factory import build_engine
    from treepo_lab.models.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, cfg.model.dtype, cfg.model.device, cfg.model.trust_remote_code)
    return build_engine(cfg.engine.name, model_dir if cfg.engine.name == "vllm" else model, tok,
                        **vars(cfg.engine)), tok


def cmd_eval(args):
    from treepo_lab.tasks.config import build_task
    from treepo_lab.train.evaluate import evaluate

    own, overrides = _split(args)
    cfg = _load(own, overrides)
    model_dir = _model_dir(own, cfg)
    engine, tok = _engine_for(cfg, model_dir)
    task = build_task(cfg.task)
    problems = task.held_out()[: cfg.eval.n_problems]
    metrics, records = evaluate(engine, tok, task, problems, cfg.eval, cfg.sampler,
                                lambda s: tok(s)["input_ids"], lambda ids: tok.decode(ids, skip_special_tokens=True),
                                seed=cfg.seed)
    print(f"model: {model_dir}")
    for k, v in metrics.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    _samples(records, 3)


def cmd_rollout(args):
    import numpy as np

    from treepo_lab.rollout.sampler import build_sampler
    from treepo_lab.rollout.tree import trees_to_json
    from treepo_lab.tasks.config import build_task

    own, overrides = _split(args)
    cfg = _load(own, overrides)
    n = int(own.get("n_prompts", 4))
    if n < 1:
        raise UserError(f"n_prompts={n} is not allowed: an integer >= 1")
    model_dir = _model_dir(own, cfg)
    engine, tok = _engine_for(cfg, model_dir)
    task = build_task(cfg.task)
    problems = task.sample(n, np.random.default_rng(cfg.seed))
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
    sampler = build_sampler(cfg.sampler, engine, decode, tok.eos_token_id)
    result = sampler.rollout([tok(p.prompt)["input_ids"] for p in problems], seed=cfg.seed)
    for tree, p in zip(result.trees, problems):
        tree.prompt_text, tree.answer = p.prompt, p.answer
        tree.meta.update({"model_path": model_dir, "temperature": cfg.sampler.temperature,
                          "top_p": cfg.sampler.top_p, "top_k": cfg.sampler.top_k, "seed": cfg.seed})
        for leaf in tree.leaves:
            sc = task.score(decode(tree.response_tokens(leaf)), p)
            leaf.reward, leaf.correct = sc.reward, sc.correct
    out = Path(own.get("out", "trees.json"))
    trees_to_json(result.trees, out)
    print(f"wrote {len(result.trees)} trees to {out}")
    for k, v in sorted(result.metrics().items()):
        print(f"  {k}: {v:.4g}")


def cmd_demo(args):
    from treepo_lab.train.run import run_experiment

    cmd_warmstart(args, default="demo")  # the embedded model and its held-out accuracy before RL
    own, overrides = _split(args)
    cfg = _load(own, overrides, default="demo")
    trainer, history = run_experiment(cfg)
    _summary(trainer, history)


def _samples(records, n):
    for r in records[:n]:
        ok = "right" if r["correct"][0] else "wrong"
        print(f"--- {r['prompt'].strip()}  (answer {r['answer']}, {ok})\n{r['responses'][0]}")


def _summary(trainer, history):
    evals = [h for h in history if "eval/accuracy" in h]
    if evals:
        first, last = evals[0], evals[-1]
        print(f"held-out accuracy: {first['eval/accuracy']:.3f} (step {int(first['train/step'])}) -> "
              f"{last['eval/accuracy']:.3f} (step {int(last['train/step'])}) on {int(last['eval/n_problems'])} problems")
    steps = [h for h in history if "cumulative/rollout/decoded_tokens" in h]
    if steps:
        s = steps[-1]
        print(f"decoded tokens: {s['cumulative/rollout/decoded_tokens']:.0f}, "
              f"token saving vs independent sampling: {s.get('cumulative/rollout/token_saving', 0):.1%}, "
              f"wall: {s['time/wall_s']:.0f} s")
    if trainer.last_eval_records:
        _samples(trainer.last_eval_records, 3)
    tracker = trainer.tracker
    if getattr(tracker, "run_id", None):
        print(f"MLflow run {tracker.run_id} ({tracker.run_name}) in {tracker.tracking_uri}")
        uri = tracker.tracking_uri
        print(f"open the UI:  {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} "
              f"--port 5000   then browse http://127.0.0.1:5000")
    if trainer.run_dir:
        print(f"checkpoints: {trainer.run_dir / 'checkpoints'}")


HINTS = {
    "show": "treepo-lab list names the experiments; treepo-lab show experiment=<name> key=value checks a config",
    "resume": "treepo-lab resume <MLflow run id | runs/<run> | runs/<run>/checkpoints/step-NNNNNN>",
    "eval": "checkpoint= takes a checkpoint dir, a run dir or an MLflow run id; model.path= any HF model dir",
    "rollout": "treepo-lab rollout n_prompts=4 out=trees.json [model.path=<HF dir>] [sampler.key=value ...]",
    **{c: f"treepo-lab {c} --help; --tracking-uri names the store (default ./mlflow.db)"
       for c in ("report", "export", "figures")},
}

def _analysis(name):
    def run(args):  # argparse-based: --help works, bad options exit 2 with argparse's message
        from treepo_lab.analysis.commands import COMMANDS as ANALYSIS

        ANALYSIS[name](args)
    return run


COMMANDS = {"demo": cmd_demo, "list": cmd_list, "show": cmd_show, "train": cmd_train, "warmstart": cmd_warmstart,
            "eval": cmd_eval, "rollout": cmd_rollout, "resume": cmd_resume,
            **{name: _analysis(name) for name in ("report", "export", "figures")}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, args = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"treepo-lab: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        print("hint: treepo-lab --help", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        COMMANDS[cmd](args)
    except Exception as err:  # user mistakes: one line + hint; anything else is a bug: traceback
        line = user_error_line(err)
        if line is None:
            raise
        print(f"treepo-lab {cmd}: {line}", file=sys.stderr)
        print(f"hint: {HINTS.get(cmd, HINTS['show'])}", file=sys.stderr)
        return 2
    return 0


def user_error_line(err: BaseException) -> str | None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from treepo_lab.registry import ConfigError
    from treepo_lab.track.mlflow_tracker import TrackingError

    if isinstance(err, (UserError, ConfigError, TrackingError, FileNotFoundError)):
        return str(err)
    import yaml

    if isinstance(err, yaml.YAMLError):
        return f"a YAML file is malformed: {' '.join(str(err).split())}"
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        # Hydra's messages are long; the first line names the bad override or key
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()][:2]
        cause = err.__cause__
        if cause is not None and str(cause).strip():
            lines.append(str(cause).strip().splitlines()[0])  # e.g. why a value could not be converted
        return " ".join(lines)
    return None


if __name__ == "__main__":
    sys.exit(main())
