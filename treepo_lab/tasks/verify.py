"""Answer extraction and checking: the last `\\boxed{...}` of a response, compared with Math-Verify.

The reward of the TreePO paper (arXiv 2508.17445) is decided here. A verifier error or timeout means "wrong", never an
exception: one odd response must not stop a training run.
"""
from __future__ import annotations

import logging
import re
import threading

BOXED = "\\boxed{"
_INTEGER = re.compile(r"[+-]?\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, nested braces included; None if absent or unclosed.

    Only the last box counts (a model may box intermediate values on the way to its answer). An
    unclosed last box is no answer, even when an earlier box was closed: the model did not finish it.
    """
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 1
    i = start + len(BOXED)
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _math_verify(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    # Math-Verify's timeouts use signal.alarm, which only works on the main thread; elsewhere run
    # without a timeout rather than fail every answer.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    if not main:  # the caller bounds the time (the trainer's reward time limit); silence the per-call warning
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"${reference}$", parsing_timeout=timeout)
    pred = parse(f"${answer}$", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def is_equivalent(answer: str | None, reference: str) -> bool:
    """Is the extracted `answer` mathematically equal to `reference`? Errors count as not equal."""
    if answer is None:
        return False
    a, r = answer.strip(), reference.strip()
    if not a:
        return False
    if a == r:
        return True
    # Fast path: two plain integers are equal exactly when their values are (no sympy needed).
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(r):
        return int(a) == int(r)
    try:
        return _math_verify(r, a)
    except Exception:  # noqa: BLE001  (the verifier's bugs and timeouts: wrong answer, the run goes on)
        return False


def check_response(response: str, reference: str) -> bool:
    """Is the last boxed answer of `response` equal to `reference`?"""
    return is_equivalent(last_boxed(response), reference)
