"""One worker session as a framework adapter holds it: the NATS client, the subscription to
the session's results and the messages published on its subject.

Framework-free, so every adapter (pipecat, LiveKit) speaks the protocol the same way: connect
and subscribe before the first `start`, a `seq` counter on every chunk, and `session_closed`
tracked so that the adapter knows when the worker no longer holds the session (idle, age, a
drain) and the next audio must open it again at the adapter's sample rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from stt_worker.config import Settings
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import (
    Chunk,
    ClientMessage,
    End,
    ServerMessage,
    SessionClosed,
    Start,
    check_session_id,
)
from stt_worker.runtime import bus
from stt_worker.runtime.connection import TOOL, Reconnect, connect


def new_session_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class WorkerSession:
    """A client's side of one worker session.

    `connect` raises `bus.BusError` when NATS cannot be reached; `send` raises it when NATS
    is gone for good, and the session is then disconnected (`connected` is False), so an
    adapter reports the loss once and sends nothing more.
    """

    def __init__(
        self,
        settings: Settings,
        session_id: str,
        *,
        reconnect: Reconnect = TOOL,
    ) -> None:
        check_session_id(session_id, settings.max_session_id_chars)
        self._settings = settings
        self.session_id = session_id
        self._reconnect = reconnect
        self._nc: bus.NatsClient | None = None
        self._exits = contextlib.AsyncExitStack()
        # Whether the worker holds our session: a `start` sent and no `session_closed` since.
        self.is_open = False
        self._closed = asyncio.Event()
        self._seq = 0

    @property
    def connected(self) -> bool:
        return self._nc is not None

    async def connect(self, client_name: str) -> AsyncIterator[ServerMessage | ProtocolError]:
        """Connect and subscribe to the session's results; returns them as they arrive
        (until `close`). Subscribed before this returns, so no result of a later `start` is
        missed."""
        nc = await connect(self._settings, client_name, self._reconnect)
        self._nc = nc
        self._exits.push_async_callback(nc.close)
        subject = f"{self._settings.transcription_subject_prefix}.{self.session_id}"
        deliveries = await self._exits.enter_async_context(bus.deliveries(nc, subject))
        return self._tracked(deliveries)

    async def _tracked(
        self, deliveries: AsyncIterator[bus.Delivery]
    ) -> AsyncIterator[ServerMessage | ProtocolError]:
        async for delivery in deliveries:
            # Closed, also on the worker's own account (idle, age): the next audio sends
            # `start` again, which joins the session chunks already on their way reopened.
            message = delivery.message
            if isinstance(message, SessionClosed):
                self.is_open = False
                self._closed.set()
            yield message

    async def open(self, start: Start) -> None:
        """Send `start`: a new worker session, whose chunks count from 1 again."""
        self._seq = 0
        self._closed.clear()
        await self.send(start)
        self.is_open = self.connected

    async def chunk(self, audio: bytes) -> None:
        self._seq += 1
        await self.send(Chunk(audio=audio, seq=self._seq))

    async def end(self, wait_s: float | None = None) -> bool:
        """Send `end` if the worker holds the session; with `wait_s`, wait that long for its
        `session_closed` (the last final comes before it). False if it did not come."""
        if not self.is_open:
            return True
        await self.send(End())
        self.is_open = False  # closing: nothing more for it, and no second `end`
        if wait_s is None:
            return True
        try:
            await asyncio.wait_for(self._closed.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def send(self, message: ClientMessage) -> None:
        """Publish `message` on the session's subject; nothing once disconnected."""
        if self._nc is None:
            return
        subject = f"{bus.stream_prefix(self._settings)}.{self.session_id}"
        try:
            await bus.publish(self._nc, subject, message)
        except bus.BusError:
            self._nc, self.is_open = None, False
            raise

    async def close(self) -> None:
        """Unsubscribe and close the client (the results iterator ends); idempotent."""
        self._nc, self.is_open = None, False
        with contextlib.suppress(bus.BusError):
            await self._exits.aclose()
