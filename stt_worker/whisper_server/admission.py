"""Admission: the whisper-server's two bounded stages, as plain counters (no I/O).

A transcription request goes through two stages, each with its own bound:

1. **upload**: its body is being received. At most `max_uploads` at once, each within the
   body timeout (the form reader enforces it). Uploads hold no place in the queue, so
   clients trickling bytes cannot keep honest requests out of it.
2. **queue**: its body is in; it waits for an inference slot, then is decoded and
   transcribed. At most `capacity` (running plus waiting) at once.

Beyond either bound the answer is 503 with `Retry-After`, at once, which the worker's HTTP
engine retries. A request that finds the queue full is refused before its upload too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stt_worker.core.errors import ErrorCode
from stt_worker.whisper_server.responses import RequestError

RETRY_AFTER_S = 1


class Admission:
    """Counts requests in each stage; refuses past the bounds."""

    def __init__(self, *, max_uploads: int, capacity: int) -> None:
        self._max_uploads = max_uploads
        self._capacity = capacity
        self.uploading = 0
        self.queued = 0

    def check_queue(self) -> None:
        """Refuse now, before any upload, when the queue is already full."""
        if self.queued >= self._capacity:
            raise _busy("The server is busy; retry shortly.")

    @contextlib.contextmanager
    def upload(self) -> Iterator[None]:
        if self.uploading >= self._max_uploads:
            raise _busy("Too many uploads in progress; retry shortly.")
        self.uploading += 1
        try:
            yield
        finally:
            self.uploading -= 1

    @contextlib.contextmanager
    def queue(self) -> Iterator[None]:
        self.check_queue()
        self.queued += 1
        try:
            yield
        finally:
            self.queued -= 1


def _busy(message: str) -> RequestError:
    return RequestError(
        503,
        message,
        code=ErrorCode.OVERLOADED,
        kind="server_error",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
