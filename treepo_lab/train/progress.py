"""What a run shows on the terminal: the training bar, the evaluation bar, setup steps, and the one
number format every printed number uses (`fmt`).

Number format: shares (accuracy, pass/maj@k, token saving) as percentages with one decimal; counts
as integers with thousands separators; other numbers with 3 significant digits. The MLflow metrics
stay ratios (0..1), as verl and TRL log them; only what a person reads is formatted.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

SHOWN = {  # metric -> short label on the training bar (each saving says what it is measured against)
    "train/accuracy": "acc",
    "critic/score/mean": "score",
    "eval/accuracy": "eval",
    "response_length/mean": "len",
    "rollout/token_saving": "saving_vs_indep",
    "rollout/token_saving_vs_sequential": "saving_vs_seq",
    "cumulative/rollout/decoded_tokens": "tok",
}
# metric-name fragments of shares in [0, 1], printed as percentages
PERCENT = ("accuracy", "token_saving", "pass_at", "maj_at", "avg_at", "fraction", "clipfrac", "ci_low", "ci_high")
# fragments of counts, printed as integers
COUNT = ("tokens", "n_problems", "n_prompts", "n_leaves", "forward_calls", "steps", "step", "count", "errors",
         "timeouts")


def fmt(key: str, value) -> str:
    """A metric value as every terminal line prints it (see the module docstring)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, (int, float)):
        return str(value)
    name = key.rsplit("/", 1)[-1]
    if any(p in name for p in PERCENT):
        return f"{100 * value:.1f}%"
    if any(c in key for c in COUNT) or (isinstance(value, int) and not isinstance(value, bool)):
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


class StepProgress:
    """The training bar: one step per update, the SHOWN numbers of the last step as its postfix.
    It is closed once at the end, so the final line is printed once."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)
        self.last: dict[str, str] = {}

    def update(self, metrics: dict) -> None:
        for key, label in SHOWN.items():
            if key in metrics:
                self.last[label] = fmt(key, metrics[key])
        self.bar.set_postfix(self.last, refresh=False)
        self.bar.update(1)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@contextmanager
def eval_progress(total: int, enabled: bool = True):
    """A bar over the held-out problems (`bar.update(n)` after each batch); it disappears when done,
    the training bar above it stays."""
    bar = tqdm(total=total, desc="eval", unit="problem", leave=False, disable=not enabled, dynamic_ncols=True,
               file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def setup_step(label: str, enabled: bool = True):
    """One line for a long setup step (loading a model, starting an engine): "label ..." then its time."""
    if not enabled:
        yield
        return
    print(f"{label} ...", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
