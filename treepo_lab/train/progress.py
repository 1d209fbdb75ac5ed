"""A progress bar for training with the key numbers of the last step."""
from __future__ import annotations

from tqdm.auto import tqdm

SHOWN = {  # metric -> short label
    "train/accuracy": "acc",
    "critic/score/mean": "score",
    "eval/accuracy": "eval",
    "response_length/mean": "len",
    "rollout/token_saving": "saving",
    "cumulative/rollout/decoded_tokens": "tok",
}


class StepProgress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled,
                        dynamic_ncols=True)
        self.last: dict[str, str] = {}

    def update(self, metrics: dict) -> None:
        for key, label in SHOWN.items():
            if key in metrics:
                v = metrics[key]
                self.last[label] = f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3f}"
        self.bar.set_postfix(self.last, refresh=False)
        self.bar.update(1)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
