"""WorkerSessions: the NATS side of one connection, the worker sessions it speaks to.

Each worker session is subscribed to (``{transcription prefix}.{id}``) before its ``start`` is
published (``{stream prefix}.{id}``), so no result can be missed; the connection's current
``start`` opens each one. Results go to the callback the bridge gives, with their session.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import msgspec

from stt_worker.core import protocol
from stt_worker.gateway.segments import Segment, Segments
from stt_worker.runtime import bus
from stt_worker.runtime.bus import BusError, Delivery, NatsClient


class WorkerSessions:
    """One connection's worker sessions over NATS; which is open is kept in `segments`."""

    def __init__(
        self,
        nc: NatsClient,
        segments: Segments,
        *,
        stream_prefix: str,
        transcription_prefix: str,
        sample_rate: int,
        on_result: Callable[[Segment, Delivery], None],
    ) -> None:
        self.segments = segments
        # The connection's `start`, sent again for each worker session it opens.
        self.start = protocol.Start(sample_rate=sample_rate)
        self._nc = nc
        self._stream_prefix = stream_prefix
        self._transcription_prefix = transcription_prefix
        self._on_result = on_result

    async def active(self) -> Segment:
        """The open worker session; the first audio or control after a flush opens one."""
        if self.segments.current is not None:
            return self.segments.current
        self.segments.check_room()
        await self._reap()
        segment = self.segments.next()
        # Subscribed before `start` leaves, so no result can be missed.
        segment.subscription = await bus.subscribe(
            self._nc,
            f"{self._transcription_prefix}.{segment.session_id}",
            functools.partial(self._on_result, segment),
        )
        self.segments.open(segment)
        await self.publish(segment, self.start_for(segment.session_id))
        return segment

    async def update(self, message: protocol.Start | protocol.StateChange) -> None:
        """Opening a session sends the current `start`; an open one gets `message`."""
        if self.segments.current is None:
            await self.active()
        else:
            await self.publish(self.segments.current, message)

    async def publish(self, segment: Segment, message: protocol.ClientMessage) -> None:
        await bus.publish(self._nc, f"{self._stream_prefix}.{segment.session_id}", message)

    def start_for(self, session_id: str | None) -> protocol.Start:
        return msgspec.structs.replace(self.start, session_id=session_id)

    async def stop_listening(self) -> None:
        """Unsubscribe from every worker session, closed or not (the socket is gone)."""
        for segment in self.segments.all:
            if segment.subscription is not None:
                with contextlib.suppress(BusError):
                    await bus.unsubscribe(segment.subscription)
        self.segments.all.clear()

    async def _reap(self) -> None:
        """Stop listening to worker sessions that have closed."""
        for segment in self.segments.closed():
            self.segments.remove(segment)
            if segment.subscription is not None:
                await bus.unsubscribe(segment.subscription)
