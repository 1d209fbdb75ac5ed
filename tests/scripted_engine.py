"""A scripted engine for sampler tests: it implements the engine protocol and returns chosen tokens.

Tokens are small ints: 0 is EOS, 1 decodes to a whole boxed answer, 2.. are letters. A script maps
(request, call number, index in the call) to the segment (a str or token list, optionally with its
log-probs). Log-probs default to a deterministic function of (prefix, token), so a test can recompute
any leaf's log-probs from its full sequence like a real model would. The engine checks the protocol:
a parent must be live and its sequence must equal the request's context.
"""
from __future__ import annotations

from treepo_lab.engines.base import EngineCounters, SegmentOut

EOS = 0
BOX = 1
BOX_TEXT = "\\boxed{7}"


def enc(text: str) -> list[int]:
    """Letters a..z -> 2..27 (other characters by code point + 100), no EOS."""
    return [ord(c) - ord("a") + 2 if "a" <= c <= "z" else ord(c) + 100 for c in text]


def dec(ids: list[int]) -> str:
    out = []
    for t in ids:
        if t == EOS:
            continue
        out.append(BOX_TEXT if t == BOX else chr(t - 2 + ord("a")) if t < 100 else chr(t - 100))
    return "".join(out)


def default_logprob(prefix: list[int], token: int) -> float:
    return -0.01 - (hash((tuple(prefix), token)) % 1000) / 200.0


def default_entropy(prefix: list[int], token: int) -> float:
    return 0.1 + (hash((token, tuple(prefix))) % 1000) / 300.0


class ScriptedEngine:
    def __init__(self, script, eos_token_id: int = EOS, logprob=default_logprob, entropy=default_entropy,
                 ignore_max_tokens: bool = False):
        self.script, self.eos_token_id = script, eos_token_id
        self.logprob, self.entropy = logprob, entropy
        self.ignore_max_tokens = ignore_max_tokens  # misbehave: return more than max_tokens
        self.counters = EngineCounters()
        self.calls: list[list] = []  # the requests of every generate call
        self.seqs: dict[int, list[int]] = {}  # path_id -> context + generated tokens
        self.live: dict[int, list[int]] = {}
        self.released = 0

    def generate(self, requests, max_tokens, sampling, seed):
        self.calls.append(list(requests))
        call = len(self.calls)
        for r in requests:
            if r.parent_id is not None:
                assert r.parent_id in self.live, f"parent {r.parent_id} not live"
                assert self.live[r.parent_id] == r.context, "context differs from the parent's sequence"
        outs = []
        for i, r in enumerate(requests):
            got = self.script(r, call, i)
            lps = None
            if isinstance(got, tuple):
                got, lps = got
            toks = enc(got) if isinstance(got, str) else list(got)
            if not self.ignore_max_tokens:
                toks = toks[:max_tokens]
            if EOS in toks:
                toks = toks[:toks.index(EOS) + 1]
            if lps is None:
                lps = [self.logprob(r.context + toks[:j], t) for j, t in enumerate(toks)]
            ents = [self.entropy(r.context + toks[:j], t) for j, t in enumerate(toks)]
            outs.append(SegmentOut(toks, list(lps[:len(toks)]), ents, eos=bool(toks) and toks[-1] == EOS))
            self.seqs[r.path_id] = r.context + toks
            self.counters.decoded_tokens += len(toks)
            self.counters.prefill_tokens += len(r.context) if r.parent_id is None else 0
        self.counters.forward_calls += 1
        self.live = {r.path_id: r.context + o.tokens for r, o in zip(requests, outs)}
        return outs

    def release(self, path_ids=None):
        self.released += 1
        if path_ids is None:
            self.live.clear()
        else:
            for p in path_ids:
                self.live.pop(p, None)

    def load_weights(self, state_dict):
        pass
