"""Every MLflow tag and Optuna attribute name the project writes or reads, in one place.

A name written by one package and read by another (the tracker writes `SWEEP_TAG`, the reports select by
it) must be the same string on both sides; a literal in each module let them drift apart (the sweep
tag was "treepo.sweep_id" where runs were tagged and "treepo.sweep" where reports looked). No imports:
any package may depend on this module.
"""
from __future__ import annotations

# ---- MLflow tags of every run -------------------------------------------------------------------
EXPERIMENT_TAG = "treepo.experiment"  # registry experiment name
SEED_TAG = "treepo.seed"
ENGINE_TAG = "treepo.engine"
DEVICE_TAG = "treepo.device"
VERSION_TAG = "treepo.version"
WORLD_SIZE_TAG = "treepo.world_size"  # ranks of the run (trainer.nproc)
HOST_TAG = "treepo.host"  # socket.gethostname() of the process that started (or last resumed) the run
ERROR_TAG = "treepo.error"  # why a run failed (cleared when a resume succeeds)
RUN_DIR_TAG = "treepo.run_dir"
CHECKPOINT_TAG = "treepo.checkpoint"
STRATEGY_TAG = "treepo.strategy"  # short label for "Group by"; dimensions are STRATEGY_TAG + ".<dim>"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
NOTE_TAG = "mlflow.note.content"  # MLflow's own run description

# ---- MLflow tags of sweep runs ------------------------------------------------------------------
# The sweep's name on its parent run and on every child: the tracker writes it for any run started with
# a sweep_id, and both the sweep machinery and the reports select by it.
SWEEP_TAG = "treepo.sweep_id"
LEGACY_SWEEP_TAG = "treepo.sweep"  # a duplicate of SWEEP_TAG that sweeps wrote before; read, never written
TRIAL_TAG = "treepo.trial"
TRIAL_STATE_TAG = "treepo.trial_state"
SWEEP_ROLE_TAG = "treepo.sweep_role"  # "parent" on a sweep's parent run
SWEEP_STATUS_TAG = "treepo.sweep_status"
SWEEP_TRIALS_TAG = "treepo.sweep_trials"
BEST_TRIAL_TAG = "treepo.best_trial"
BEST_PARAMS_TAG = "treepo.best_params"
PRUNED_TAG = "treepo.pruned"
STUDY_TAG = "treepo.study"  # where the report finds the study: its name ...
STORAGE_TAG = "treepo.optuna_storage"  # ... and its storage URL

# ---- Optuna study and trial user attributes -----------------------------------------------------
SPEC_ATTR = "spec"  # the sweep spec (study)
URI_ATTR = "tracking_uri"  # the MLflow store (study)
PARENT_ATTR = "parent_run_id"  # the sweep's parent run (study)
STOP_ATTR = "stopped"  # why workers stop taking trials (study)
FAILURE_WINDOW_ATTR = "failure_window_start"  # the failure limit counts trials from this number on (study)
ERROR_ATTR = "error"  # a failed trial's error (trial)
INTERRUPTED_ATTR = "interrupted"  # a trial stopped by Ctrl-C (trial)
SEED_VALUES_ATTR = "seed_values"  # objective values per seed (trial)
RUNS_ATTR = "mlflow_runs"  # seed -> MLflow run id (trial)
WORKER_ATTR = "worker"  # host, pid and heartbeat of the worker running it (trial)
FAIL_REASON_ATTR = "fail_reason"  # why a trial was failed by the storage's heartbeat (trial)
TIMING_ATTR = "timing"  # wall time per seed (trial)
OBJECTIVE_STD_ATTR = "objective_std"  # spread of each objective over seeds (trial)
