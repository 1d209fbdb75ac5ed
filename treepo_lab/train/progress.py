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


def _live() -> bool:
    """A redrawn bar only on a terminal; into a file or CI log every redraw would be a new line."""
    return sys.stderr.isatty()


class StepProgress:
    """The training bar: one step per update, the SHOWN numbers of the last step as its postfix.
    On a terminal the bar redraws in place; elsewhere (a log file, CI) one line is printed at the end.
    Either way the final line appears once."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.enabled, self.live = enabled, enabled and _live()
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not self.live,
                        dynamic_ncols=True, file=sys.stderr)
        self.total, self.n, self.t0 = total, initial, time.perf_counter()
        self.last: dict[str, str] = {}

    def update(self, metrics: dict) -> None:
        for key, label in SHOWN.items():
            if key in metrics:
                self.last[label] = fmt(key, metrics[key])
        self.n += 1
        self.bar.set_postfix(self.last, refresh=False)
        self.bar.update(1)

    def note(self, line: str) -> None:
        """A line above the bar (a warning during the run), without breaking it."""
        self.bar.write(line, file=sys.stderr)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.enabled and not self.live:
            post = ", ".join(f"{k}={v}" for k, v in self.last.items())
            print(f"train: {self.n}/{self.total} steps in {time.perf_counter() - self.t0:.0f} s"
                  + (f", {post}" if post else ""), file=sys.stderr, flush=True)


class _Count:
    """The bar's `update(n)` where no bar is drawn: counts, for the one line printed at the end."""

    def __init__(self):
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n


@contextmanager
def eval_progress(total: int, enabled: bool = True):
    """A bar over the held-out problems (`bar.update(n)` after each batch). On a terminal it
    disappears when done (the training bar above it stays); elsewhere one line at the end."""
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="eval", unit="problem", leave=False, dynamic_ncols=True,
               file=sys.stderr) if enabled and _live() else _Count()
    try:
        yield bar
    finally:
        if isinstance(bar, _Count):
            if enabled:
                print(f"eval: {bar.n} problems in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        else:
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
