"""Ctrl-C and SIGTERM belong to the main thread, which holds them back while its bookkeeping is half done."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def block_in_this_thread() -> None:
    """For helper threads: a stop signal must reach the main thread, never interrupt it by way of another."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block is done; they arrive right after it.

    Only helper threads that called :func:`block_in_this_thread` are sure not to take a stop
    signal meanwhile (CPython would then run the handler in the main thread, inside the block).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
