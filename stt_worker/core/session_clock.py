"""`SessionClock`: when a session last heard from its publisher, and which timeout is due.

Three timeouts, checked in this order on each tick: no message at all for
`idle_timeout_s` (the publisher went away: the session is evicted), a session older than
`max_session_s` (ended as by `end`), and, with an utterance open, no audio for
`chunk_timeout_s` (the publisher stopped mid-utterance: it is finalised). No I/O, no clock
of its own: callers pass `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Timeout = Literal["idle", "max_duration", "timeout"]


@dataclass(slots=True)
class SessionClock:
    idle_timeout_s: float
    max_session_s: float
    chunk_timeout_s: float
    opened_at: float
    last_activity_at: float = field(init=False)
    last_audio_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_activity_at = self.last_audio_at = self.opened_at

    def heard(self, now: float, *, audio: bool = False) -> None:
        """A message came; `audio`: it held audio. Only audio keeps an utterance open:
        empty chunks (or ones too short to finish a frame) would otherwise hold it, and its
        memory, past the chunk timeout."""
        self.last_activity_at = now
        if audio:
            self.last_audio_at = now

    def due(self, now: float, *, in_utterance: bool) -> Timeout | None:
        if now - self.last_activity_at >= self.idle_timeout_s:
            return "idle"
        if now - self.opened_at >= self.max_session_s:
            return "max_duration"
        if in_utterance and now - self.last_audio_at >= self.chunk_timeout_s:
            return "timeout"
        return None
