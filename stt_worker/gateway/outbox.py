"""Outbox: one connection's bounded queue of frames waiting for a slow WebSocket client.

Pure (no I/O; the bridge pairs it with an event). When it is full:

1. a partial makes room by evicting the oldest queued partial (a newer one supersedes it),
   or is itself dropped when none is queued;
2. any other frame (final, interrupt, error, session_closed) evicts the oldest queued partial;
3. with no partial left to evict, `push` returns False: a final would be lost, so the bridge
   closes the connection (1013) rather than drop it silently or grow without bound.
"""

from __future__ import annotations

import collections


class Outbox:
    def __init__(self, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.dropped_partials = 0
        # What the queued frames hold, in characters: the connection's memory for its client.
        self.queued_chars = 0
        self._frames: collections.deque[tuple[str, bool]] = collections.deque()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: str, *, partial: bool) -> bool:
        """Queue `frame`; False when it could not be queued without losing a non-partial."""
        if len(self._frames) >= self.max_frames and not self._evict_partial():
            if not partial:
                return False
            self.dropped_partials += 1
            return True
        self._frames.append((frame, partial))
        self.queued_chars += len(frame)
        return True

    def pop(self) -> str | None:
        """The oldest queued frame, or None when empty."""
        if not self._frames:
            return None
        frame = self._frames.popleft()[0]
        self.queued_chars -= len(frame)
        return frame

    def _evict_partial(self) -> bool:
        for index, (_, partial) in enumerate(self._frames):
            if partial:
                self.queued_chars -= len(self._frames[index][0])
                del self._frames[index]
                self.dropped_partials += 1
                return True
        return False
