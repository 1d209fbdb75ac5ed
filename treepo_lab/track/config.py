"""Tracking configuration: where MLflow runs go, what they are called, and what gets logged.

Every field is validated before any compute starts (`validate`), like the rest of the config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from treepo_lab.registry import ConfigError


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: nothing is logged anywhere (the trainer gets track.null.NULL_TRACKER)
    # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory (made absolute at
    # start, so a Hydra chdir cannot scatter databases). http(s)://host:port for a tracking server.
    tracking_uri: str | None = None
    # the MLflow experiment. null: $MLFLOW_EXPERIMENT_NAME, else the sweep's id for a sweep trial (one
    # MLflow experiment per sweep), else one per task and model, e.g. "arith_d2-tiny", so runs of
    # different registry experiments that a user compares land together (tag treepo.experiment tells them apart)
    experiment_name: str | None = None
    # null: "<registry experiment>-s<seed>-<MMDD-HHMMSS>" (with "-t<trial>" for sweep trials)
    run_name: str | None = None
    system_metrics: bool = True  # CPU/RAM/GPU utilisation as system/* metrics (needs psutil)
    log_trees_every: int = 10  # log sample trees (compact JSON + HTML drawing) every N training steps (0: never)
    n_trees_logged: int = 2  # how many trees (prompts) per logging step
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags, e.g. {owner: alice}

    def validate(self) -> None:
        if self.tracking_uri is not None and not str(self.tracking_uri).strip():
            raise ConfigError("tracking.tracking_uri", self.tracking_uri, "null or a non-empty URI")
        for key in ("experiment_name", "run_name"):
            value = getattr(self, key)
            if value is not None and not str(value).strip():
                raise ConfigError(f"tracking.{key}", value, "null or a non-empty string")
        if self.experiment_name is not None and len(self.experiment_name) > 500:
            raise ConfigError("tracking.experiment_name", self.experiment_name, "at most 500 characters")
        if not isinstance(self.log_trees_every, int) or self.log_trees_every < 0:
            raise ConfigError("tracking.log_trees_every", self.log_trees_every, "an int >= 0 (0: never)")
        if not isinstance(self.n_trees_logged, int) or self.n_trees_logged < 0:
            raise ConfigError("tracking.n_trees_logged", self.n_trees_logged, "an int >= 0")
        for k, v in dict(self.tags).items():
            if not isinstance(k, str) or not k or len(k) > 250:
                raise ConfigError("tracking.tags", k, "tag keys are non-empty strings of <= 250 chars")
            if not isinstance(v, str):
                raise ConfigError(f"tracking.tags.{k}", v, "a string (quote numbers in YAML)")

    def resolved_uri(self) -> str:
        """The URI runs go to; a relative sqlite path is made absolute against the working directory."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
            uri = prefix + str(Path(uri[len(prefix):]).resolve())
        return uri
