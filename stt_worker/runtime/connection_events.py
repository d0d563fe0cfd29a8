"""The worker's NATS connections coming and going: what it logs, counts and tells sessions.

Core NATS delivers nothing to a client while it is away, and nothing tells the publishers:
after a reconnect every live session hears that audio may have been lost (`audio_dropped`).
JetStream kept what was published meanwhile, so durable mode tells nobody. A slow consumer
(the client's buffer for a subscription overflowed) is the intake's to report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from nats.errors import SlowConsumerError

from stt_worker.core.errors import SttError
from stt_worker.core.protocol import ErrorCode
from stt_worker.runtime.observation import Observer

logger = logging.getLogger(__name__)

Refuse = Callable[[str, SttError, float, None], Awaitable[bool]]


class ConnectionEvents:
    """nats-py's disconnected, reconnected and error callbacks for the worker's connections
    (the sessions' own connection's too, `STT_SESSION_CONNECTIONS`)."""

    def __init__(
        self,
        *,
        durable: bool,
        observer: Observer,
        live_sessions: Callable[[], Iterable[str]],
        refuse: Refuse,
        dropped: Callable[[str], Awaitable[None]],
    ) -> None:
        self._durable = durable
        self._observer = observer
        self._live_sessions = live_sessions
        self._refuse = refuse
        self._dropped = dropped
        self._disconnected_at: float | None = None
        self.closing = False  # the worker closes the connection itself: no news

    async def disconnected(self) -> None:
        self._disconnected_at = self._disconnected_at or time.time()
        if not self.closing:  # nats-py reports its own close() as a disconnect too
            logger.warning("disconnected from NATS; reconnecting")

    async def reconnected(self) -> None:
        self._observer.reconnected()
        logger.warning("reconnected to NATS")
        lost_at, self._disconnected_at = self._disconnected_at, None
        if self._durable or lost_at is None:
            return  # JetStream kept what was published meanwhile: nothing was lost
        now = time.time()
        error = SttError(
            f"the worker's NATS connection was lost for {now - lost_at:.1f} s; audio published "
            "meanwhile was not received",
            code=ErrorCode.AUDIO_DROPPED,
        )
        for session_id in list(self._live_sessions()):
            await self._refuse(session_id, error, now, None)

    async def error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            await self._dropped(exc.subject)
            return
        logger.warning("NATS error: %r", exc)
