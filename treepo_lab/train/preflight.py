"""Every check that can run before training, run before the MLflow run, the run directory or a checkpoint
exists (`run_experiment` calls `preflight` first): only training itself can leave a FAILED run.

    the config (treepo_lab.config.validate, unless it was validated already: its values, names, keys the
        schema does not have, seeds, the world (trainer.nproc or torchrun's WORLD_SIZE) and the device)
    the tracking URI: a scheme MLflow can store runs in (the server's reachability is checked at start)
    the dataset: read and parsed whole (file, row and column named on error)
    model.dtype=bfloat16 on a CPU without native bf16
    model.lora.r > 0 needs peft installed
    the model: a directory with config.json and tokenizer files (or a hub id that resolves), its
        tokenizer loaded; the embedded model needs nothing on disk (its tokenizer is rebuilt here); a .gguf
        file must be a model transformers reads (converted to its cached HF directory here)
    task.chat_template on needs a tokenizer with a chat template (or a template file that exists); a real
        model whose tokenizer has none gets a warning saying how to give one
    the tokenizer covers every character of the prompts and answers (no silent <unk>)
    the longest prompt plus the longest response (max_depth * segment_len) fits the model's positions

Each failure is a ConfigError (one line at the command line, exit 2). Warnings (e.g. string answers
under Math-Verify) come back in the result for the caller to print.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from treepo_lab.config import ExperimentConfig, checked
from treepo_lab.models.gguf import converted, is_gguf
from treepo_lab.models.lora import check_installed, check_targets, skeleton
from treepo_lab.models.prompting import NO_TEMPLATE, PromptFormat, prompt_format
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.registry import ConfigError
from treepo_lab.tasks.base import Task, unknown_characters
from treepo_lab.tasks.build import build_task

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MODEL_DIR = ("a model directory holding config.json and tokenizer files (tokenizer.json or tokenizer_config.json), "
             "a .gguf model file, or a Hugging Face hub id")
# MLflow's URI schemes and the drivers they need (psycopg2 etc. are optional installs)
SQL_DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql", "mssql": "pyodbc"}
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


@dataclass
class Preflight:
    task: Task
    tokenizer: object
    max_positions: int | None  # the model's position limit (None: the config does not say)
    longest_prompt: int  # tokens, special tokens included
    warnings: list[str] = field(default_factory=list)


def preflight(cfg) -> Preflight:
    """Run every pre-training check on `cfg` (an ExperimentConfig or DictConfig); raise the first ConfigError."""
    cfg = checked(cfg)  # the config's own rules, the world and the device (once: treepo_lab/config.py)
    if cfg.tracking.enabled:
        check_tracking_uri(cfg.tracking.resolved_uri())
    check_dtype(cfg)
    check_installed(cfg.model.lora)
    task = build_task(cfg.task)
    tokenizer, max_positions, model_config = load_tokenizer(cfg)
    if cfg.model.lora.r:  # the adapters' targets are layers of this model (its modules, no weights read)
        check_targets(cfg.model.lora, skeleton(model_config, tokenizer, cfg.warmstart.tiny))
    prompts = prompt_format(cfg.task, cfg.model.path, tokenizer)
    check_characters(task, tokenizer, cfg.task)
    longest = check_positions(task, prompts, max_positions, cfg)
    warnings = list(getattr(task, "warnings", []))
    if not prompts.chat and cfg.model.path is not None and cfg.task.chat_template is None:
        warnings.append(NO_TEMPLATE.format(model=cfg.model.path))
    return Preflight(task, tokenizer, max_positions, longest, warnings)


def check_dtype(cfg: ExperimentConfig) -> None:
    """bfloat16 on a CPU that can only emulate it is refused (it would be slower than float32)."""
    if cfg.model.dtype == "bfloat16":
        from treepo_lab.models.load import bf16_problem, resolve_device

        problem = bf16_problem(resolve_device(cfg.model.device))
        if problem:
            raise ConfigError("model.dtype", cfg.model.dtype, problem)


def check_tracking_uri(uri: str) -> None:
    """A URI MLflow has a store for, with its driver installed; a SQLite file whose folder exists."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores

    key = "tracking.tracking_uri"
    try:
        stores.get_store_builder(uri)
    except Exception:  # noqa: BLE001  (MLflow's UnsupportedModelRegistryStoreURIException and kin)
        schemes = ", ".join(s for s in sorted(stores._registry) if s)
        raise ConfigError(key, uri, f"a URI MLflow can store runs in (schemes: {schemes}; or a folder path), "
                                    f"e.g. sqlite:///mlflow.db or http://127.0.0.1:5000") from None
    scheme = urlparse(uri).scheme.split("+")[0]
    driver = SQL_DRIVERS.get(scheme)
    if driver and importlib.util.find_spec(driver) is None and "+" not in urlparse(uri).scheme:
        raise ConfigError(key, uri, f"a {scheme} URI needs the {driver} package (pip install {driver})")
    if scheme == "sqlite" and ":memory:" not in uri:
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise ConfigError(key, uri, f"a SQLite file in an existing folder ({db.parent} does not exist)")


def load_tokenizer(cfg: ExperimentConfig):
    """(tokenizer, max positions, its transformers config or None for the embedded model) of the model the run
    will load, without loading its weights."""
    if cfg.model.path is None:  # the embedded model: the character tokenizer, positions from its shape
        return build_char_tokenizer(), cfg.warmstart.tiny.max_positions, None
    path, key = cfg.model.path, "model.path"
    if is_gguf(path):  # converted once here (or found in the cache): a file that is not a model is refused
        path = str(converted(path))
    local = Path(path).expanduser()
    if local.is_file():
        raise ConfigError(key, path, f"{MODEL_DIR}; this is a file")
    if local.is_dir():
        names = {p.name for p in local.iterdir()}
        if not names:
            raise ConfigError(key, path, f"{MODEL_DIR}; this directory is empty")
        if "config.json" not in names:
            raise ConfigError(key, path, f"{MODEL_DIR}; this directory has no config.json")
        if not names & set(TOKENIZER_FILES):
            raise ConfigError(key, path, f"{MODEL_DIR}; this directory has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    elif path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ConfigError(key, path, f"{MODEL_DIR}; no such directory")
    from transformers import AutoConfig, AutoTokenizer

    trust = cfg.model.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else path, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else path, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001  (transformers/hub errors: name them in one line)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = "its config or tokenizer does not load" if local.is_dir() else "not found locally and not fetched from the hub"
        raise ConfigError(key, path, f"{MODEL_DIR}; {where} ({type(e).__name__}: {first[:300]})") from None
    positions = next((getattr(config, k) for k in POSITION_KEYS if isinstance(getattr(config, k, None), int)), None)
    return tokenizer, positions, config


def check_characters(task: Task, tokenizer, task_cfg) -> None:
    """Characters the tokenizer maps to <unk> (a character tokenizer's alphabet is small): refuse, listing
    the characters and the rows, since the model could never read or write them."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:  # byte-level BPE: every character encodes
        return

    def known(c: str) -> bool:
        return unk not in tokenizer(c, add_special_tokens=False)["input_ids"]

    bad = unknown_characters(task.all_problems(), known)
    if not bad:
        return
    shown = "; ".join(f"{c!r} in {_rows(ids)}" for c, ids in list(bad.items())[:8])
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    key, value = ("task.path", task_cfg.path) if task_cfg.name == "file" else ("task.name", task_cfg.name)
    raise ConfigError(key, value, f"text the model's tokenizer can encode; these characters would become "
                                  f"{tokenizer.unk_token}: {shown}{more} (replace them in the data, or use a "
                                  f"model whose tokenizer has them)")


def _rows(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")


def check_positions(task: Task, prompts: PromptFormat, max_positions: int | None, cfg: ExperimentConfig) -> int:
    """The longest prompt as the model sees it (tokens) plus max_depth * segment_len must fit the model's positions."""
    problems = task.all_problems()
    lengths = [len(prompts.encode(prompts.render(p.prompt))) for p in problems]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    longest, response = lengths[i], cfg.sampler.max_response_len
    if max_positions is not None and longest + response > max_positions:
        d, l = cfg.sampler.max_depth, cfg.sampler.segment_len
        raise ConfigError("sampler.max_depth", d,
                          f"max_depth*segment_len={d}*{l}={response} plus the longest prompt ({longest} tokens, "
                          f"{problems[i].id}) within the model's {max_positions} positions: at most "
                          f"{max(0, (max_positions - longest) // l)} segments of {l} (or a shorter sampler.shape)")
    return longest


# ---- resuming: the checkpoint must load before anything is touched -------------------------------------

class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded: names the file; nothing was changed."""

    def __init__(self, path: Path, reason: str, earlier: Path | None = None):
        hint = f"; an earlier checkpoint: treepo-lab resume {earlier}" if earlier else ""
        ValueError.__init__(self, f"checkpoint file {path} cannot be loaded ({reason}); nothing was changed{hint}")
        self.key, self.value, self.allowed = "checkpoint", str(path), reason


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable (truncated, bad header), or None. Reads the header only: the
    8-byte header length, the JSON header, and the data size it promises."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"truncated: the header says {n} bytes, the file has {size}"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"not a safetensors file ({type(e).__name__}: {e})"
    if 8 + n + end != size:
        return f"truncated: {8 + n + end} bytes expected, {size} found"
    return None


def check_checkpoint(ckpt: Path, earlier: Path | None = None) -> dict:
    """state.json, optim.safetensors, model/config.json and every model/*.safetensors are whole; returns
    state.json. Raises CheckpointError naming the first bad file."""
    ckpt = Path(ckpt)
    state = _read_json(ckpt / "state.json", earlier)
    _read_json(ckpt / "model" / "config.json", earlier)
    shards = sorted((ckpt / "model").glob("*.safetensors"))
    if not shards:
        raise CheckpointError(ckpt / "model", "no *.safetensors weights", earlier)
    for f in [ckpt / "optim.safetensors", *shards]:
        if not f.is_file():
            raise CheckpointError(f, "missing", earlier)
        problem = safetensors_problem(f)
        if problem:
            raise CheckpointError(f, problem, earlier)
    return state


def _read_json(path: Path, earlier: Path | None) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "missing", earlier) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"{type(e).__name__}: {e}", earlier) from None


# ---- one process per run directory --------------------------------------------------------------------

LOCK_NAME = ".treepo.lock"


def lock_run_dir(run_dir: Path) -> FileLock:
    """Hold run_dir's lock (created if need be) or refuse: two processes writing one run's checkpoints
    would overwrite each other's."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError("run directory", str(run_dir),
                          f"a run directory no other process is using: another treepo-lab process holds "
                          f"{run_dir / LOCK_NAME} (wait for it to end, or choose another tracking.run_name)") from None
    return lock
