"""What the command line prints: quiet library output, the run summary, the rollout and eval tables,
and the error line with a hint that fits the error. Numbers use `progress.fmt`, the one format.

Imports stay light here (no torch, no mlflow): `treepo-lab show` and every config error print
without loading either.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from treepo_lab.train.progress import fmt

# loggers of other libraries that print INFO lines a user did not ask for
NOISY_LOGGERS = ("mlflow", "alembic", "transformers", "urllib3", "httpx", "huggingface_hub", "vllm", "optuna")
UI_URL = "http://127.0.0.1:5000"
# by name: importing their modules would load mlflow or torch; a failed rank or launch is one line too
USER_ERRORS_ELSEWHERE = ("TrackingError", "UIError", "RankFailed", "LaunchFailed", "CheckpointWriteError")
VERBOSE = False  # set by configure_output (-v)


class UserError(Exception):
    """A mistake in what the user typed or pointed at: one line, no traceback, and its own hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def configure_output(verbose: bool) -> None:
    """Quiet by default: warnings and errors of other libraries only, no transformers/HF bars.
    Environment variables too, so subprocesses (vLLM workers, the MLflow server) are quiet alike."""
    global VERBOSE
    VERBOSE = verbose
    level = "INFO" if verbose else "WARNING"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["MLFLOW_LOGGING_LEVEL"] = level  # read when mlflow is imported
    if not verbose:
        # read when transformers / huggingface_hub are imported: no "Loading weights" / "Writing model shards" bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    else:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if "transformers" in sys.modules:  # already imported (tests, a notebook): switch it directly
        from transformers.utils import logging as tlog

        (tlog.enable_progress_bar if verbose else tlog.disable_progress_bar)()
        tlog.set_verbosity_info() if verbose else tlog.set_verbosity_error()


# ------------------------------------------------------------------------------------------- errors

def user_error_line(err: BaseException) -> str | None:
    """The one line for a user mistake, or None for a bug (which then shows its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from treepo_lab.registry import ConfigError

    if isinstance(err, (UserError, ConfigError, FileNotFoundError)) or type(err).__name__ in USER_ERRORS_ELSEWHERE:
        return str(err)
    import yaml

    if isinstance(err, yaml.YAMLError):
        return f"a YAML file is malformed: {' '.join(str(err).split())}"
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        typed = _override_of_wrong_type(err)
        if typed:
            return typed
        # Hydra's messages are long; the first line names the bad override or key
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()][:2]
        cause = err.__cause__
        if cause is not None and str(cause).strip():
            lines.append(str(cause).strip().splitlines()[0])  # e.g. why a value could not be converted
        return " ".join(lines)
    return None


# OmegaConf's reason for refusing an override's value -> what the key allows
WANTED_TYPES = (("converted to Integer", "an integer"), ("converted to Float", "a number"),
                ("not a valid bool", "true or false"), ("Cannot merge DictConfig with", "a mapping, e.g. {key: value}"),
                ("to Dict[", "a mapping, e.g. {key: value}"), ("not a ListConfig, list or tuple", "a list, e.g. [a, b]"),
                ("Cannot merge ListConfig with", "a list, e.g. [a, b]"))


def _override_of_wrong_type(err: BaseException) -> str | None:
    """`key=value is not allowed: <what the key's type allows> (OmegaConf's words)` for an override whose
    value has the wrong type, or None."""
    import re

    found = re.match(r"Error merging override (\S+?)=(\S*)$", " ".join(str(err).split()))
    if not found or err.__cause__ is None:
        return None
    key, value = found.groups()
    reason = (str(err.__cause__).strip().splitlines() or [""])[0].strip()
    wanted = next((w for phrase, w in WANTED_TYPES if phrase in reason), None)
    return f"{key}={value} is not allowed: {wanted} ({reason})" if wanted else None


# which file documents each config section (the field's comment says what it means and allows)
SECTION_FILES = {"sampler": "rollout/config.py", "advantage": "algo/config.py", "loss": "algo/config.py",
                 "reward": "algo/config.py", "trainer": "train/config.py", "eval": "train/config.py",
                 "model": "models/config.py", "warmstart": "models/config.py", "task": "tasks/config.py",
                 "engine": "engines/config.py", "tracking": "track/config.py"}


NO_SUCH_KEY = "no such key: treepo-lab show prints every key; a key the config lacks is added with +key=value"


def hint_for(cmd: str, err: BaseException, line: str = "") -> str:
    """A hint for this error (`line`: what user_error_line printed for it), not a generic one."""
    from treepo_lab.registry import ConfigError

    text = f"{err} {line}"
    if isinstance(err, UserError) and err.hint:
        return err.hint
    if isinstance(err, ConfigError):
        if err.key == "experiment":
            return "treepo-lab list names the experiments"
        if "unknown key" in str(err.allowed):
            return NO_SUCH_KEY
        doc = SECTION_FILES.get(err.key.split(".", 1)[0])
        where = f"; the comment of {err.key} in treepo_lab/{doc} says what it means" if doc else ""
        return f"treepo-lab show prints the resolved config{where}"
    if type(err).__name__ == "TrackingError":
        return "tracking.tracking_uri=sqlite:///mlflow.db logs to a local file; tracking.enabled=false logs nothing"
    if isinstance(err, FileNotFoundError):
        if cmd in ("resume", "eval", "rollout"):
            return "a checkpoint is runs/<run>/checkpoints/step-NNNNNN, a run dir runs/<run>, or an MLflow run id"
        return "check the path; relative paths are read from the current directory"
    if "not in '" in text and "Could not override" in text:
        return NO_SUCH_KEY
    if "could not be converted" in text or "Error merging override" in text:
        return "treepo-lab show prints each key with a value of the right type"
    if "override_grammar" in text or "no viable alternative" in text or "mismatched input" in text:
        return "overrides are key=value; quote a value with spaces or brackets, e.g. 'task.template=\"{question}\"'"
    if "Cannot find primary config" in text:
        return "treepo-lab list names the experiments"
    return "treepo-lab --help"


def interrupted_line(stop: KeyboardInterrupt) -> str:
    """Ctrl-C: run_experiment raises a KeyboardInterrupt carrying .checkpoint and .resume_ref (the
    launcher of the ranks, which knows neither, one carrying its own .line)."""
    if getattr(stop, "line", None):
        return stop.line
    ckpt, ref = getattr(stop, "checkpoint", None), getattr(stop, "resume_ref", None)
    if ckpt is None:
        return "interrupted: no checkpoint yet" + (f" (run {ref})" if ref else "")
    return f"interrupted: checkpoint {ckpt} \u2014 resume with: treepo-lab resume {ref or ckpt}"


# ------------------------------------------------------------------------------------------- output

def _samples(records, n):
    for r in records[:n]:
        ok = "right" if r["correct"][0] else "wrong"
        print(f"--- {r['prompt'].strip()}  (answer {r['answer']}, {ok})\n{r['responses'][0]}")


def print_warmstart(path) -> None:
    info = json.loads((Path(path) / "warmstart.json").read_text())
    print(f"warm-started model: {path}")
    shown = {"train_s": "training time (s)", "greedy_accuracy": "greedy held-out accuracy",
             "mixed_fraction_16": "prompts whose 16 samples mix right and wrong",
             "sample_accuracy_t1": "sample accuracy at temperature 1", "eval_problems": "problems evaluated"}
    for k, label in shown.items():
        if k in info:
            print(f"  {label}: {fmt(k.replace('mixed_fraction', 'fraction'), info[k])}")


def print_eval(model_dir, metrics: dict, records: list[dict]) -> None:
    print(f"model: {model_dir}")
    width = max(map(len, metrics), default=0)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {fmt(k, v)}")
    _samples(records, 3)


def print_rollout(result, out) -> None:
    """One row per tree, then the compute of the whole call (both savings, each said against what)."""
    print(f"wrote {len(result.trees)} trees to {out}")
    rows = [("tree", "leaves", "right", "accuracy", "mean reward", "mean length", "max depth")]
    for i, t in enumerate(result.trees):
        n = len(t.leaves)
        right = sum(bool(lf.correct) for lf in t.leaves)
        rewards = [lf.reward for lf in t.leaves if lf.reward is not None]
        lengths = [sum(t.segment_lengths(lf)) for lf in t.leaves]
        rows.append((str(i), str(n), str(right), fmt("accuracy", right / n if n else 0.0),
                     fmt("reward", sum(rewards) / len(rewards)) if rewards else "n/a",
                     fmt("length", sum(lengths) / n if n else 0.0),
                     str(max((len(lf.node_path) for lf in t.leaves), default=0))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths)))
    m = result.metrics()
    print(f"tokens: {fmt('tokens', m['rollout/decoded_tokens'])} decoded + {fmt('tokens', m['rollout/prefill_tokens'])} "
          f"prefilled for {fmt('tokens', m['rollout/generated_tokens'])} response tokens")
    line = f"token saving: {fmt('token_saving', m['rollout/token_saving'])} vs independent sampling"
    if "rollout/token_saving_vs_sequential" in m:
        line += f", {fmt('token_saving', m['rollout/token_saving_vs_sequential'])} vs the sequential sampler"
    print(line)


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
        _samples(trainer.last_eval_records, 3)
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
