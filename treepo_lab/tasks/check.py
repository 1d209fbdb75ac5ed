"""The answer check of a task: extract an answer from the response, then compare it with the reference.

    extract:  boxed (last \\boxed{...}) | hash (last `#### N`, GSM8K) | regex (task.check.pattern) | whole
    compare:  math_verify | exact (after task.check.normalize) | numeric (tolerances) | python (module:function)

The reference goes through the same extractor (or `task.check.reference`) when it carries the marker (a
GSM8K solution ending in `#### 72`, a MATH solution with a \\boxed{}); otherwise it is used whole. Math-Verify reads letters as
algebra symbols (`abc` equals `cba`), so answers that are words or strings need `exact` (or `python`).
A comparison error counts as wrong inside Math-Verify (its parser has bugs on odd LaTeX); a user's
function that raises is left to raise, so the trainer counts it in `reward/errors` instead of hiding it.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
import string
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from treepo_lab.registry import ConfigError, Registry
from treepo_lab.tasks.verify import is_equivalent, last_boxed

# name -> fn(text, pattern) -> answer or None
EXTRACTORS: Registry = Registry("answer extractor")
# name -> builder(CheckConfig) -> fn(answer, reference) -> bool
COMPARATORS: Registry = Registry("answer comparison")
# name -> fn(text) -> text, applied in order by compare=exact
NORMALIZERS: Registry = Registry("answer normalisation")

_HASH = re.compile(r"####\s*([^\n]*)")


@EXTRACTORS.register("boxed")
def _extract_boxed(text: str, pattern: str | None = None) -> str | None:
    return last_boxed(text)


@EXTRACTORS.register("hash")
def _extract_hash(text: str, pattern: str | None = None) -> str | None:
    found = _HASH.findall(text)
    return found[-1].strip() if found else None


@EXTRACTORS.register("regex")
def _extract_regex(text: str, pattern: str | None = None) -> str | None:
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.re.groups else last.group(0)


@EXTRACTORS.register("whole")
def _extract_whole(text: str, pattern: str | None = None) -> str | None:
    return text


NORMALIZERS.register("strip")(str.strip)
NORMALIZERS.register("lower")(str.lower)
NORMALIZERS.register("spaces")(lambda s: " ".join(s.split()))  # any run of whitespace -> one space
NORMALIZERS.register("punct")(lambda s: s.strip(string.punctuation + " "))  # "Paris." -> "Paris"


@COMPARATORS.register("math_verify")
def _math_verify(cfg) -> Callable[[str, str], bool]:
    return is_equivalent


@COMPARATORS.register("exact")
def _exact(cfg) -> Callable[[str, str], bool]:
    steps = [NORMALIZERS.get(n, "task.check.normalize") for n in cfg.normalize]

    def norm(s: str) -> str:
        for f in steps:
            s = f(s)
        return s

    return lambda answer, reference: norm(answer) == norm(reference)


_NUMBER_NOISE = re.compile(r"[,$%\s]|\\!|\\,")  # 1,000  $5  50%  1\,000 (LaTeX thin space)


def parse_number(text: str) -> float | None:
    """A plain number, a/b fraction or \\frac{a}{b}; thousands separators, $ and % ignored. None if not."""
    s = _NUMBER_NOISE.sub("", text.strip().rstrip("."))
    frac = re.fullmatch(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    try:
        return float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


@COMPARATORS.register("numeric")
def _numeric(cfg) -> Callable[[str, str], bool]:
    def equal(answer: str, reference: str) -> bool:
        a, r = parse_number(answer), parse_number(reference)
        if a is None or r is None or not (math.isfinite(a) and math.isfinite(r)):
            return False
        return math.isclose(a, r, rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol)

    return equal


def load_function(ref: str) -> Callable:
    """`package.module:function` (importable, or a .py file under the working directory by that
    dotted name) or `path/to/file.py:function`."""
    key = "task.check.function"
    module_name, _, attr = str(ref).rpartition(":")
    if not module_name or not attr:
        raise ConfigError(key, ref, "module:function or path/to/file.py:function")
    path = Path(module_name) if module_name.endswith(".py") else Path(*module_name.split(".")).with_suffix(".py")
    try:
        if module_name.endswith(".py") or (importlib.util.find_spec(module_name.split(".")[0]) is None
                                           and path.is_file()):
            if not path.is_file():
                raise ConfigError(key, ref, f"an existing Python file before ':' ({path} not found)")
            spec = importlib.util.spec_from_file_location(f"treepo_user_check_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: say so in one line
        raise ConfigError(key, ref, f"an importable module ({type(e).__name__}: {e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(key, ref, f"a function defined in {module_name} (no callable {attr!r} there)")
    return fn


@COMPARATORS.register("python")
def _python(cfg) -> Callable[[str, str], bool]:
    fn = load_function(cfg.function)
    return lambda answer, reference: bool(fn(answer, reference))


class AnswerCheck:
    """Built once per task from `task.check`; `correct(response, reference)` is the reward's decision."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._extract = EXTRACTORS.get(cfg.extract, "task.check.extract")
        self._extract_reference = EXTRACTORS.get(cfg.reference or cfg.extract, "task.check.reference")
        self._equal = COMPARATORS.get(cfg.compare, "task.check.compare")(cfg)

    def extract(self, response: str) -> str | None:
        """The answer a response gives (None: it gives none, which is wrong)."""
        answer = self._extract(response, self.cfg.pattern)
        return None if answer is None or not answer.strip() else answer

    def reference(self, reference: str) -> str:
        """The reference's answer: extracted when it carries the marker (`#### 72`), else used whole."""
        found = self._extract_reference(reference, self.cfg.pattern)
        return found if found is not None and found.strip() else reference

    def equal(self, answer: str | None, reference: str) -> bool:
        """Is an extracted answer the reference's answer? (maj@k votes on extracted answers.)"""
        return answer is not None and self._equal(answer, self.reference(reference))

    def correct(self, response: str, reference: str) -> bool:
        return self.equal(self.extract(response), reference)
