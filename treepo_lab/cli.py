"""`treepo-lab`: the command line. Every command takes Hydra overrides (key=value, +key=value, ...).

`treepo-lab <command> --help` explains a command. A user mistake (unknown experiment, bad override or
value, missing file) prints one readable line and a hint that fits it, and exits with status 2; a bug
still shows its traceback. Quiet by default (no MLflow INFO lines, no transformers bars); `-v` anywhere
on the line brings other libraries' output back.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from dataclasses import dataclass

from treepo_lab.cli_output import (UserError, configure_output, hint_for, interrupted_line, print_eval, print_rollout,
                                   print_summary, print_warmstart, user_error_line)
from treepo_lab.sweep.commands import SWEEP_COMMANDS

USAGE = """usage: treepo-lab [-v] <command> [experiment=<name>] [key=value ...]

commands:
{commands}

`treepo-lab <command> --help` for one command. Overrides use Hydra's grammar (sampler.width=8,
model.path=Qwen/Qwen2.5-0.5B, ~key, +key=value); `treepo-lab show` prints every key.
-v / --verbose shows other libraries' logs and progress bars (MLflow, transformers).
Runs log to MLflow (default sqlite:///mlflow.db here; `treepo-lab ui` opens it); checkpoints go to runs/<run name>/."""


@dataclass(frozen=True)
class Command:
    run: object  # fn(own: dict, overrides: list[str], raw: list[str])
    summary: str
    usage: str
    details: str
    own: tuple[str, ...] = ("experiment",)  # key=value arguments the command reads itself
    overrides: bool = True  # takes Hydra overrides


def _split(args: list[str], cmd: Command) -> tuple[dict[str, str], list[str]]:
    own, overrides = {}, []
    for a in args:
        key = a.split("=", 1)[0]
        if "=" in a and key in cmd.own:
            own[key] = a.split("=", 1)[1]
        elif a.startswith("-") and not a.startswith(("~", "+")):
            raise UserError(f"unknown option {a!r}; options are written key=value", "treepo-lab <command> --help")
        elif not cmd.overrides:
            raise UserError(f"unexpected argument {a!r}", f"usage: {cmd.usage}")
        else:
            overrides.append(a)
    return own, overrides


def _load(own: dict, overrides: list[str], default: str = "default"):
    from treepo_lab.config import load_config

    return load_config(own.get("experiment", default), overrides)


# ------------------------------------------------------------------------------------------- commands

def cmd_list(own, overrides, raw):
    from treepo_lab.config import list_experiments

    exps = list_experiments()
    width = max(map(len, exps), default=0)
    for name, desc in exps.items():
        print(f"{name:<{width}}  {desc}")


def cmd_show(own, overrides, raw):
    from treepo_lab.config import to_yaml

    print(to_yaml(_load(own, overrides)), end="")


def cmd_train(own, overrides, raw, default="default"):
    from treepo_lab.train import launch
    from treepo_lab.train.run import run_experiment

    cfg = _load(own, overrides, default)
    if cfg.trainer.nproc > 1 and not launch.launched():  # this process starts the ranks and waits
        from treepo_lab.train.run import check_run_name

        check_run_name(cfg)  # refused here, before any rank starts
        launch.launch(cfg, ["train", *raw])
        return
    trainer, history = run_experiment(cfg)
    if trainer is not None and trainer.world.is_main:  # None: the ranks ran it (trainer.nproc > 1)
        print_summary(trainer, history)


def cmd_resume(own, overrides, raw):
    from treepo_lab.train import run as train_run

    if not raw or "=" in raw[0]:
        raise UserError("resume needs a run id, run directory or checkpoint first", f"usage: {COMMANDS['resume'].usage}")
    try:
        trainer, history = train_run.resume(raw[0], raw[1:])
    except train_run.RunComplete as done:  # nothing left to do: not an error
        print(done)
        return
    if trainer is not None and trainer.world.is_main:  # None: the ranks ran it (trainer.nproc > 1)
        print_summary(trainer, history)


def cmd_warmstart(own, overrides, raw, default="default"):
    from treepo_lab.config import warmstart_config
    from treepo_lab.models.warmstart import warmstart

    cfg = _load(own, overrides, default)
    if cfg.model.path is not None:
        print(f"model.path={cfg.model.path}: a given model needs no warm start")
        return
    print_warmstart(warmstart(warmstart_config(cfg)))


def _model_dir(own: dict, cfg) -> str:
    from treepo_lab.config import warmstart_config
    from treepo_lab.models.load import resolve_model
    from treepo_lab.train.run import find_checkpoint

    if "checkpoint" in own:
        return str(find_checkpoint(own["checkpoint"]) / "model")
    return resolve_model(cfg.model, warmstart_config(cfg))


def _engine_for(cfg, model_dir):
    from treepo_lab.engines.factory import build_engine
    from treepo_lab.models.load import load_model_and_tokenizer
    from treepo_lab.train.progress import setup_step

    with setup_step(f"loading {model_dir}"):
        model, tok = load_model_and_tokenizer(model_dir, cfg.model.dtype, cfg.model.device,
                                              cfg.model.trust_remote_code)
    with setup_step(f"starting the {cfg.engine.name} engine"):
        engine = build_engine(cfg.engine.name, model_dir if cfg.engine.name == "vllm" else model, tok,
                              **vars(cfg.engine))
    return engine, tok


def cmd_eval(own, overrides, raw):
    from treepo_lab.models.prompting import prompt_format
    from treepo_lab.tasks.build import build_task
    from treepo_lab.train.evaluate import evaluate
    from treepo_lab.train.progress import eval_progress

    cfg = _load(own, overrides)
    model_dir = _model_dir(own, cfg)
    engine, tok = _engine_for(cfg, model_dir)
    task = build_task(cfg.task)
    fmt = prompt_format(cfg.task, cfg.model.path, tok)  # the prompts as training shows them to the model
    problems = [fmt.problem(p) for p in task.held_out()[: cfg.eval.n_problems]]
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
    with eval_progress(len(problems)) as bar:
        metrics, records = evaluate(engine, tok, task, problems, cfg.eval, cfg.sampler, fmt.encode,
                                    decode, seed=cfg.seed, progress=bar.update,
                                    reward_timeout_s=cfg.trainer.reward_timeout_s)
    print_eval(model_dir, metrics, records)


def cmd_rollout(own, overrides, raw):
    import numpy as np

    from treepo_lab.algo.reward import score_leaves
    from treepo_lab.algo.scoring import Scorer
    from treepo_lab.models.prompting import prompt_format
    from treepo_lab.rollout.sampler import build_sampler
    from treepo_lab.rollout.tree import trees_to_json
    from treepo_lab.tasks.build import build_task
    from treepo_lab.train.progress import setup_step

    cfg = _load(own, overrides)
    try:
        n = int(own.get("n_prompts", 4))
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"n_prompts={own.get('n_prompts')!r} is not allowed: an integer >= 1",
                        f"usage: {COMMANDS['rollout'].usage}")
    model_dir = _model_dir(own, cfg)
    engine, tok = _engine_for(cfg, model_dir)
    task = build_task(cfg.task)
    fmt = prompt_format(cfg.task, cfg.model.path, tok)  # the prompts as training shows them to the model
    problems = [fmt.problem(p) for p in task.sample(n, np.random.default_rng(cfg.seed))]
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
    sampler = build_sampler(cfg.sampler, engine, decode, tok.eos_token_id)
    with setup_step(f"sampling {n} trees"):
        result = sampler.rollout([fmt.encode(p.prompt) for p in problems], seed=cfg.seed)
    with Scorer(task, decode, cfg.trainer.reward_timeout_s) as scorer:  # the reward training would give
        score_leaves(result.trees, problems, scorer, cfg.reward, cfg.sampler.max_response_len)
    for tree in result.trees:
        tree.meta.update({"model_path": model_dir, "temperature": cfg.sampler.temperature,
                          "top_p": cfg.sampler.top_p, "top_k": cfg.sampler.top_k, "seed": cfg.seed})
    out = own.get("out", "trees.json")
    trees_to_json(result.trees, out)
    print_rollout(result, out)


def cmd_demo(own, overrides, raw):
    """Warm start (cached), then the demo sweep (4 strategies x 2 seeds, 2 workers) and its report."""
    from treepo_lab.sweep.commands import cmd_sweep, parse_sweep

    spec = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"
    args = [str(spec if spec.is_file() else "sweeps/demo.yaml"), "--workers", "2", *overrides]
    parse_sweep(args)  # a bad argument stops here, not after the warm start
    cmd_warmstart(own, overrides, raw, default="demo")  # the embedded model and its held-out accuracy before RL
    return cmd_sweep(args)


def cmd_ui(own, overrides, raw):
    from treepo_lab import cli_output
    from treepo_lab.track.ui import serve_ui

    cfg = _load(own, overrides)
    try:
        port = int(own.get("port", 5000))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UserError(f"port={own.get('port')!r} is not allowed: an integer in 1..65535", "treepo-lab ui port=5001")
    serve_ui(cfg.tracking.resolved_uri(), port, verbose=cli_output.VERBOSE)


def _analysis(name: str):
    """report / export / figures parse their own options (argparse: --sweep, --runs ID ..., --help)."""
    def run(own, overrides, raw):
        from treepo_lab.analysis.commands import COMMANDS as ANALYSIS

        ANALYSIS[name](raw)
    return run


def cmd_paper(own, overrides, raw):
    from treepo_lab.sweep.paper import cmd_paper as run

    return run(raw)


RAW_ARGS = ("resume", "report", "export", "figures", "paper", *SWEEP_COMMANDS)  # commands that read their arguments themselves
OWN_HELP = ("report", "export", "figures", "paper")  # commands whose --help argparse prints

COMMANDS = {
    "demo": Command(cmd_demo, "warm-start the embedded model, run the demo sweep (4 strategies x 2 seeds) and its report",
                    "treepo-lab demo [key=value ...]",
                    "Runs `warmstart`, then `sweep sweeps/demo.yaml --workers 2` (GRPO, GRPO w/ tree sampling, TreePO\n"
                    "fixed / random init divergence, 2 seeds each); key=value applies to every trial.\n"
                    "e.g. treepo-lab demo trainer.steps=30 eval.n_problems=50"),
    "list": Command(cmd_list, "the registered experiments (experiments/*.yaml) with one-line descriptions",
                    "treepo-lab list", "Takes no arguments.", own=(), overrides=False),
    "show": Command(cmd_show, "the resolved config of an experiment, every key with its value",
                    "treepo-lab show [experiment=<name>] [key=value ...]",
                    "e.g. treepo-lab show experiment=treepo_more_init sampler.width=8   (validates, computes nothing)"),
    "train": Command(cmd_train, "train an experiment, log it to MLflow, write checkpoints",
                     "treepo-lab train [experiment=<name>] [key=value ...]",
                     "e.g. treepo-lab train experiment=grpo trainer.steps=100 seed=1\n"
                     "     treepo-lab train experiment=seg_4x32 tracking.experiment_name=segments"),
    "warmstart": Command(cmd_warmstart, "build (or reuse from the cache) the warm-started embedded model",
                         "treepo-lab warmstart [experiment=<name>] [warmstart.key=value ...]",
                         "e.g. treepo-lab warmstart warmstart.steps=800   (cached under ~/.cache/treepo_lab/warmstart)"),
    "eval": Command(cmd_eval, "evaluate a model or checkpoint on the held-out split",
                    "treepo-lab eval [checkpoint=<dir | run dir | MLflow run id>] [key=value ...]",
                    "e.g. treepo-lab eval checkpoint=runs/<run>/checkpoints/step-000060 eval.k=16 eval.temperature=1.0\n"
                    "     treepo-lab eval eval.sampler=tree eval.k=16 eval.temperature=1.0   (test-time tree sampling)",
                    own=("experiment", "checkpoint")),
    "rollout": Command(cmd_rollout, "sample trees, write them as JSON, print a short table",
                       "treepo-lab rollout [n_prompts=4] [out=trees.json] [checkpoint=...] [key=value ...]",
                       "e.g. treepo-lab rollout n_prompts=4 out=trees.json sampler.width=8",
                       own=("experiment", "checkpoint", "out", "n_prompts")),
    "resume": Command(cmd_resume, "continue a run from its latest checkpoint",
                      "treepo-lab resume <MLflow run id | runs/<run> | runs/<run>/checkpoints/step-NNNNNN> [key=value ...]",
                      "The run continues in the same MLflow run, with the config it was started with.", own=()),
    **{name: Command(_analysis(name), summary, f"treepo-lab {name} {usage_}", "") for name, summary, usage_ in (
        ("report", "comparison report of runs: Markdown, self-contained HTML, PNG + PDF figures",
         "--sweep NAME | --experiment NAME | --runs ID ... [--group-by KEY ...] [--baseline GROUP] [--out DIR]"),
        ("export", "full metric histories in long format (CSV or Parquet)",
         "--sweep NAME | --experiment NAME | --runs ID ... [--format csv|parquet] [--out FILE]"),
        ("figures", "paper-style figures and tables (recipes in analysis/)",
         "NAME [--sweep NAME | --runs ID ...] [--run-missing] [key=value ...]"))},
    "paper": Command(cmd_paper, "the paper's findings reproduced or refuted: runs (or resumes) sweeps/paper.yaml, "
                     "writes reports/paper",
                     "treepo-lab paper [--workers 2] [--seeds N] [--only ID ...] [--out DIR] [key=value ...]", ""),
    "ui": Command(cmd_ui, "the MLflow UI on the project's store (127.0.0.1, one worker); prints the URL",
                  "treepo-lab ui [port=5000] [tracking.tracking_uri=...]",
                  "Serves the store runs log to (tracking.tracking_uri, $MLFLOW_TRACKING_URI or ./mlflow.db) until Ctrl-C.",
                  own=("experiment", "port")),
    **{name: Command(lambda own, overrides, raw, fn=fn: fn(raw), summary, use, details, own=())
       for name, (fn, summary, use, details) in SWEEP_COMMANDS.items()},
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {n:<{width}}  {c.summary}" for n, c in COMMANDS.items()))


def command_help(name: str) -> str:
    c = COMMANDS[name]
    return f"usage: {c.usage}\n\n{c.summary[0].upper() + c.summary[1:]}.\n{c.details}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage() if len(argv) < 2 or argv[1] not in COMMANDS else command_help(argv[1]))
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"treepo-lab: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        print("hint: treepo-lab --help", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in args) and name not in OWN_HELP:
        print(command_help(name))
        return 0
    configure_output(verbose)
    cmd = COMMANDS[name]
    try:
        own, overrides = _split(args, cmd) if name not in RAW_ARGS else ({}, [])
        status = cmd.run(own, overrides, args)
    except KeyboardInterrupt as stop:  # Ctrl-C: where the run stands, how to go on, no traceback
        if os.environ.get("RANK", "0") == "0":  # one line per run: rank 0's (or the launcher's)
            print(interrupted_line(stop), file=sys.stderr)
        return getattr(stop, "exit_code", 130)  # 143: the launcher of the ranks got SIGTERM
    except SystemExit as stop:  # argparse of report/export/figures: --help (0) or a bad option (2, message printed)
        if name not in OWN_HELP:
            raise
        return stop.code if isinstance(stop.code, int) else 0
    except Exception as err:  # user mistakes: one line + hint; anything else is a bug: traceback
        line = user_error_line(err)
        if line is None:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank refuses alike: rank 0 says it
            print(f"treepo-lab {name}: {line}", file=sys.stderr)
            print(f"hint: {hint_for(name, err, line)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
