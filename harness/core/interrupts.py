"""Ctrl-C and SIGTERM become ``KeyboardInterrupt`` (the run layer then ends the run KILLED and keeps
its last checkpoint), but never inside a :func:`protected` section, such as a write to the
tracking store or a checkpoint's save: there the interrupt waits until the section ends, so a
record is never left half-written by the interrupt itself. (SIGKILL cannot be caught: the
checkpoint's atomic rename and the store's transactions cover it.)"""

from __future__ import annotations

import signal
from contextlib import contextmanager

_depth = 0
_pending = False


def _handler(signum, frame) -> None:
    global _pending
    if _depth > 0:
        _pending = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM and SIGINT through :func:`_handler` (the CLI does this at start)."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


@contextmanager
def protected():
    """A section an interrupt may not cut in two; an interrupt that arrived meanwhile is raised at its end."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt
