"""Stopping rules for one freshly generated segment (TreePO, arXiv 2508.17445), registered by name.

`sampler.stop_rules` lists the rules in the order they are tried; the first that fires names the
finish reason. The default [boxed, eos, max_length, max_depth, repetition] is the official order with
`boxed_as_eos` and `least_prioritized`; `boxed_with_eos` is `boxed_and_eos_first`, and `repetition`
listed first is `most_prioritized`. The checks look at the text of the SEGMENT just generated, not
at the whole response (as the official sampler does). No rule consults a reward or verifier.
Fixed with respect to the official code: a segment that is only the EOS token stops the path (the
official sub-list search never looks at index 0, quirk in §1.4).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from treepo_lab.registry import Registry
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.tree import FinishReason
from treepo_lab.tasks.verify import BOXED


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
    """Is there a complete \\boxed{...} (nested braces included) anywhere in this segment?

    Every `\\boxed{` is tried, as the official regex finds every complete box: an unclosed box later
    in the segment (`so \\boxed{5} hmm \\boxed{`) does not hide an earlier complete one.
    """
    start = text.find(BOXED)
    while start >= 0:
        depth = 1
        for c in text[start + len(BOXED):]:
            depth += (c == "{") - (c == "}")
            if depth == 0:
                return True
        start = text.find(BOXED, start + 1)
    return False


def has_eos(tokens: list[int], eos_flag: bool, eos_token_id: int) -> bool:
    """The segment contains EOS anywhere, index 0 included (an EOS-only segment is an EOS stop)."""
    return bool(eos_flag) or eos_token_id in tokens


@dataclass
class Segment:
    """What a stop rule may look at: the new segment and the path it extends."""

    text: str  # the segment's text
    eos: bool  # the segment contains EOS
    response_len: int  # the whole response's length after this segment
    depth: int  # segments on the path, this one included


@dataclass(frozen=True)
class StopRule:
    reason: str  # the FinishReason of a path this rule stops
    fires: Callable[[Segment, SamplerConfig], bool]


# name -> StopRule (`sampler.stop_rules`)
STOP_RULES: Registry[StopRule] = Registry("stop rule")
STOP_RULES.register("boxed")(StopRule(FinishReason.FINISHED, lambda seg, cfg: has_boxed(seg.text)))
STOP_RULES.register("boxed_with_eos")(
    StopRule(FinishReason.FINISHED, lambda seg, cfg: seg.eos and has_boxed(seg.text)))
STOP_RULES.register("eos")(StopRule(FinishReason.EOS, lambda seg, cfg: seg.eos))
STOP_RULES.register("max_length")(
    StopRule(FinishReason.MAX_LENGTH, lambda seg, cfg: seg.response_len >= cfg.max_response_len))
STOP_RULES.register("max_depth")(StopRule(FinishReason.MAX_DEPTH, lambda seg, cfg: seg.depth >= cfg.max_depth))
STOP_RULES.register("repetition")(StopRule(
    FinishReason.REPETITION, lambda seg, cfg: has_repetition(seg.text, cfg.repetition_window, cfg.repetition_count)))


def stop_rules(cfg: SamplerConfig) -> list[StopRule]:
    """The configured rules, in order."""
    return [STOP_RULES.get(name, "sampler.stop_rules") for name in cfg.stop_rules]


def stop_reason(rules: list[StopRule], cfg: SamplerConfig, seg: Segment) -> str | None:
    """Why the path that just generated `seg` stops, or None if it goes deeper. The caller truncates
    the response to d*l when the reason is MAX_LENGTH."""
    for rule in rules:
        if rule.fires(seg, cfg):
            return rule.reason
    return None


def too_short(cfg: SamplerConfig, response_len: int) -> bool:
    """min-length filter: a path finishing shorter than min_len is dropped silently (not a leaf; its
    budget is refilled by fallback)."""
    return cfg.min_len is not None and response_len < cfg.min_len
