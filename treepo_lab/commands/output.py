"""What every command prints alike: quiet library output, the error line with a hint that fits the error, the
interrupted line, evaluation samples. A command's own tables are in its module. Numbers use `progress.fmt`.

Imports stay light here (no torch, no mlflow): `treepo-lab show` and every config error print
without loading either.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings


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
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    else:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
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

def print_samples(records, n: int) -> None:
    """The first `n` evaluation records: prompt, reference answer, right or wrong, the first response."""
    for r in records[:n]:
        ok = "right" if r["correct"][0] else "wrong"
        print(f"--- {r['prompt'].strip()}  (answer {r['answer']}, {ok})\n{r['responses'][0]}")
