"""The one way to say "no tracking": `NULL_TRACKER`, the Tracker API doing nothing.

It lives apart from `mlflow_tracker` so that code that only needs "a tracker or nothing" (the trainer
built from Python, the tests) does not import mlflow. `Tracker.start` returns it when
`tracking.enabled=false`; `Trainer(cfg)` uses it by default.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class NullTracker:
    """Accepts every Tracker call and records nothing; its ids are None."""

    run_id = run_name = experiment_id = experiment_name = tracking_uri = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def log_params(self, params: Mapping[str, Any], resume: bool = False) -> None: ...
    def set_tag(self, key: str, value: Any) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_trees(self, trees: list[dict], step: int) -> None: ...
    def log_eval_samples(self, records: list[dict], step: int) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...
    def finish(self, exc: BaseException | None = None) -> None: ...

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False


NULL_TRACKER = NullTracker()
