"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be; raised inside a
weakref callback or a `__del__` it is printed ("Exception ignored in ...") and dropped, and the run went
on (seen in a sweep worker: the trial ran to the end and its run ended FINISHED, not KILLED). `install`
makes SIGINT also leave a flag, and the trainer calls `check` at every step boundary to raise it again.
"""
from __future__ import annotations

import signal

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
