"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be; raised inside a
weakref callback or a `__del__` it is printed ("Exception ignored in ...") and dropped, and the run went
on (seen in a sweep worker: the trial ran to the end and its run ended FINISHED, not KILLED). `install`
makes SIGINT also leave a flag, and the trainer calls `check` at every step boundary to raise it again.

`die_with_parent`: a process that must not outlive the one that started it (a rank, a sweep worker) gets a
signal when that one is gone, SIGKILL of it included (an OOM killer, a scheduler's hard kill).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT raises KeyboardInterrupt (even in a process started with SIGINT ignored) and is remembered."""
    global _requested
    _requested = False
    signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise the KeyboardInterrupt of a SIGINT whose first one Python dropped."""
    if _requested:
        raise KeyboardInterrupt


def die_with_parent(sig: int) -> bool:
    """Linux: `sig` to this process when its parent dies (PR_SET_PDEATHSIG); False where it cannot be set,
    or when the parent is already gone (then `sig` is raised at once)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, sig)  # PR_SET_PDEATHSIG
    if parent == 1 or os.getppid() != parent:  # it died before the call: no signal would come
        signal.raise_signal(sig)
        return False
    return True
