"""Ctrl-C and SIGTERM held while a store write or a checkpoint write is in flight.

A KeyboardInterrupt raised inside an SQLite write leaves that write's transaction open: every later write of
the process then fails with "database is locked", so the run could not even be ended KILLED (seen in a sweep
worker: its run was ended FAILED from outside). Inside `held()` SIGINT and SIGTERM are only recorded; on
leaving, the handlers are back and each recorded signal is raised again, where a write is no longer open.
A checkpoint is written whole the same way (train/checkpoint.py): it is what `resume` continues from.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HELD = (signal.SIGINT, signal.SIGTERM)
_holding: list[int] = []


class _Caught(list):
    """The handler while held: it only records the signal."""

    def __call__(self, signum, frame) -> None:
        self.append(signum)


def _default(sig: int):
    return signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL


@contextlib.contextmanager
def held():
    """Yields the handlers to set on leaving (signal -> handler; the ones found on entering): a caller may
    put its own there. Nested or off the main thread (where handlers cannot be set) it holds nothing."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield {}
        return
    caught, after = _Caught(), {}
    _holding.append(1)
    try:
        for sig in HELD:  # set one by one inside the try: a stop half-way still restores what was set
            found = signal.signal(sig, caught)
            # None: set outside Python; a recorder: one whose restore never ran. Neither is one to go back to
            after[sig] = _default(sig) if found is None or isinstance(found, _Caught) else found
        yield after
    finally:
        _holding.pop()
        for sig, handler in after.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)
