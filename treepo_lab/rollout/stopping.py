"""Stopping rules for one freshly generated segment (TREEPO_SPEC.md §1.4).

The checks look at the text of the SEGMENT just generated, not at the whole response (as the official
sampler does), in this order: repetition (only if `most_prioritized`), boxed answer, EOS, length cap
d*l, depth cap d, repetition (`least_prioritized`, the default). No rule consults a reward or verifier.
Fixed with respect to the official code: a segment that is only the EOS token stops the path (the
official sub-list search never looks at index 0, quirk in §1.4).
"""
from __future__ import annotations

from collections import Counter

from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.tree import FinishReason
from treepo_lab.tasks.verify import last_boxed


def has_repetition(text: str, window: int = 32, count: int = 8) -> bool:
    """Does some `window`-character substring occur at least `count` times (overlaps count)?

    Windows slide with stride 1, so a run of window+count-1 identical characters is enough:
    'a'*38 -> False, 'a'*39 -> True with the defaults (the official thresholds).
    """
    if len(text) - window + 1 < count:
        return False  # fewer windows than `count`: no string can occur often enough
    seen: Counter[str] = Counter()
    for i in range(len(text) - window + 1):
        w = text[i:i + window]
        seen[w] += 1
        if seen[w] >= count:
            return True
    return False


def has_boxed(text: str) -> bool:
    """A complete \\boxed{...} in this segment. The same extraction as the reward (tasks.verify), so a
    path stopped as `finished` is one the reward can read an answer from."""
    return last_boxed(text) is not None


def has_eos(tokens: list[int], eos_flag: bool, eos_token_id: int) -> bool:
    """The segment contains EOS anywhere, index 0 included (an EOS-only segment is an EOS stop)."""
    return bool(eos_flag) or eos_token_id in tokens


def stop_reason(
    cfg: SamplerConfig, text: str, eos: bool, response_len: int, depth: int
) -> str | None:
    """Why the path that just generated this segment stops, or None if it goes deeper.

    `response_len` is the whole response length after this segment, `depth` the number of segments on
    the path. The caller truncates the response to d*l when the reason is MAX_LENGTH.
    """
    def repeats() -> bool:
        return has_repetition(text, cfg.repetition_window, cfg.repetition_count)

    if cfg.repetition_policy == "most_prioritized" and repeats():
        return FinishReason.REPETITION
    if has_boxed(text) and (cfg.boxed_eos_policy == "boxed_as_eos" or eos):
        return FinishReason.FINISHED
    if eos:
        return FinishReason.EOS
    if response_len >= cfg.max_response_len:
        return FinishReason.MAX_LENGTH
    if depth >= cfg.max_depth:
        return FinishReason.MAX_DEPTH
    if cfg.repetition_policy == "least_prioritized" and repeats():
        return FinishReason.REPETITION
    return None


def too_short(cfg: SamplerConfig, response_len: int) -> bool:
    """min-length filter: a path finishing shorter than min_len is dropped silently (not a leaf; its
    budget is refilled by fallback)."""
    return cfg.min_len > 0 and response_len < cfg.min_len
