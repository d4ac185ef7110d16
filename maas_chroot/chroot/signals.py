"""Signals during a chroot session: SIGTERM unwinds it; set-up and tear-down are not cut short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(SystemExit):
    """SIGTERM arrived during a session; raised so the session unwinds (exit status 143)."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a session sets up or restores (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
