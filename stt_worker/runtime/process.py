"""What the worker asks of its process: stop signals that start the drain, and handing the
heap that closed sessions freed back to the OS."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import signal
from collections.abc import Callable

# Sessions closed before the freed heap is handed back to the OS (see `release_free_heap`).
TRIM_AFTER_CLOSES = 64


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and Ctrl-C set `stop` (the worker then drains)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Only the main thread may own signals; tests run workers elsewhere.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)


class HeapTrimmer:
    """Trims the heap after every `TRIM_AFTER_CLOSES` closed sessions, or once none is left."""

    def __init__(self) -> None:
        self._closed_since_trim = 0

    def session_closed(self) -> None:
        self._closed_since_trim += 1

    def maybe_trim(self, open_sessions: int) -> None:
        if self._closed_since_trim >= TRIM_AFTER_CLOSES or (
            self._closed_since_trim and not open_sessions
        ):
            self._closed_since_trim = 0
            release_free_heap()


def release_free_heap() -> None:
    """glibc keeps the memory of closed sessions for reuse, so after a burst of sessions the
    process's RSS would stay at the peak; `malloc_trim` returns the free part to the OS."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: musl, macOS
        return None
