"""Bridge: one WebSocket connection carried to worker sessions over NATS, and back.

Frames in: audio becomes ``chunk`` messages (raw ``audio`` bytes and a ``seq``), controls
become ``start`` / ``state_change`` / ``end``. A flush or reset ends the current worker session
(the worker finalises its pending speech) and the next audio opens a new one, ``<id>~2``,
``<id>~3``... (segments.py), whose results come back on the same socket: the worker is not
changed, and it never drops accepted audio. The worker's ids are the gateway's
(namespace.py); frames going out carry the client's own name for the session instead.

Results out: each session's ``ai.voice.transcription.{id}`` messages (worker_sessions.py),
decoded into the protocol's typed messages (`runtime.bus`), rendered for the client's dialect
(dialect.py) and handed to the `Sender` (sender.py), which writes them as fast as the client
reads and closes with 1013 a client too slow to take its finals.

Bounds on what one connection costs: a connection with no audio within
``first_audio_timeout_s`` is closed (1008 ``idle_timeout``); the gateway's error frames are
cut in size (dialect.py) and rationed (refusals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from stt_worker.core import protocol
from stt_worker.core.audio import check_format
from stt_worker.core.errors import ErrorCode, OverloadedError, ProtocolError
from stt_worker.core.protocol import ServerMessage, SessionClosed, Transcription, went_on
from stt_worker.gateway.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
)
from stt_worker.gateway.control import (
    Dialect,
    End,
    Flush,
    Reset,
    Start,
    dialect_of,
    parse_binary,
    parse_text,
)
from stt_worker.gateway.dialect import EmptyFinal, GatewayError, Outgoing, is_partial, render
from stt_worker.gateway.limits import ErrorBudget
from stt_worker.gateway.refusals import Refusals
from stt_worker.gateway.segments import SEGMENT_MARK, Segment, Segments
from stt_worker.gateway.sender import Sender
from stt_worker.gateway.stats import GatewayStats
from stt_worker.gateway.worker_sessions import WorkerSessions
from stt_worker.runtime.bus import BusError, Delivery, NatsClient

# app.py and realtime.py import these from here.
__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TRY_AGAIN_LATER",
    "SEGMENT_MARK",
    "Bridge",
    "BridgeConfig",
    "GatewayStats",
]

logger = logging.getLogger(__name__)

# What a send or receive raises when the client has gone (uvicorn's ClientDisconnected is an
# OSError).
_GONE = (WebSocketDisconnect, OSError)


@dataclass(slots=True)
class BridgeConfig:
    """What a bridge needs of the worker's and the gateway's settings."""

    stream_prefix: str
    transcription_prefix: str
    max_chunk_bytes: int
    max_queue: int
    max_pending_sessions: int
    close_timeout_s: float
    first_audio_timeout_s: float
    # Error frames: `error_burst` at once, then `error_frames_per_s`.
    error_burst: int = 20
    error_frames_per_s: float = 5.0


@dataclass(eq=False)
class Bridge:
    """One connection. `session_id` is the worker's id of its first session; `client_id` the
    client's name for it, which every frame to the client carries instead."""

    websocket: WebSocket
    nc: NatsClient
    config: BridgeConfig
    stats: GatewayStats
    session_id: str
    client_id: str
    sample_rate: int
    dialect: Dialect | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._sender = Sender(
            self.websocket,
            self.stats,
            max_queue=self.config.max_queue,
            close_timeout_s=self.config.close_timeout_s,
            session_id=self.session_id,
        )
        self._segments = Segments(self.session_id, self.client_id, self.config.max_pending_sessions)
        self._workers = WorkerSessions(
            self.nc,
            self._segments,
            stream_prefix=self.config.stream_prefix,
            transcription_prefix=self.config.transcription_prefix,
            sample_rate=self.sample_rate,
            on_result=self._on_result,
        )
        # Set by `end`: the close that follows the last results.
        self._ending: tuple[int, str] | None = None
        self._finished = False
        budget = ErrorBudget(self.config.error_burst, self.config.error_frames_per_s)
        self._refusals = Refusals(budget, self.stats, self.session_id)
        self._idle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the accepted socket until the client leaves or the session ends."""
        tasks = (self._sender.start(), asyncio.create_task(self._receive_frames()))
        self._idle = asyncio.get_running_loop().call_later(
            self.config.first_audio_timeout_s, self._no_audio
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._idle is not None:
                self._idle.cancel()
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            self._finished = True  # late results are not queued for a socket nobody sends on
            try:
                await self._end_all()
                await self._sender.close_socket()
            finally:
                self.closed.set()
        for outcome in outcomes:
            # A client that vanished mid-frame is an ordinary end; anything else is a bug.
            if isinstance(outcome, Exception) and not isinstance(outcome, _GONE):
                raise outcome

    @property
    def queued_chars(self) -> int:
        """What this connection holds for its client (result and error frames)."""
        return self._sender.outbox.queued_chars

    async def end_session(self, code: int = CLOSE_NORMAL, reason: str = "session ended") -> None:
        """Like the client's ``end``: finalise, send the last results, then close."""
        if self._ending is not None:
            return
        self._ending = (code, reason)
        await self._end_current(flush=False)
        self._close_when_done()

    def _no_audio(self) -> None:
        """A socket that holds a connection slot without speaking gives it back."""
        if self._sender.close is not None or self._ending is not None:
            return
        self.stats.idle_closes += 1
        timeout_s = self.config.first_audio_timeout_s
        logger.info(
            "gateway: no audio within %.1f s; closing",
            timeout_s,
            extra={"session_id": self.session_id},
        )
        self._queue(
            GatewayError(
                code=ErrorCode.IDLE_TIMEOUT,
                message=f"no audio within {timeout_s:g} s of connecting "
                "(STT_GATEWAY_FIRST_AUDIO_TIMEOUT_S)",
                session_id=self.client_id,
            )
        )
        self._sender.close_after_sending(CLOSE_POLICY_VIOLATION, "no audio")

    def abort(self, code: int, reason: str) -> None:
        """Close now: queued frames are not sent."""
        self._sender.abort(code, reason)

    async def _end_all(self) -> None:
        """The socket is gone: end the open worker session, stop listening to all of them."""
        with contextlib.suppress(BusError):
            await self._end_current(flush=False)
        await self._workers.stop_listening()

    # ------------------------------------------------------------ client -> worker

    async def _receive_frames(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self._sender.close is not None:
                continue  # closing: the sender finishes what is queued, then closes
            if len(self._sender.outbox):
                # Frames already received return without suspending: let the sender keep
                # pace, or a burst of error frames would fill the outbox before it runs.
                await asyncio.sleep(0)
            try:
                if self._ending is not None:
                    self._refusals.after_end()
                    continue
                if message.get("text") is not None:
                    await self._on_text(message["text"])
                else:
                    await self._on_binary(message.get("bytes") or b"")
            except (ProtocolError, OverloadedError) as exc:
                refusal = self._refusals.frame_for(exc, self._client_now)
                if refusal is not None:
                    self._queue(refusal)
            except BusError as exc:
                logger.warning("gateway: publish failed: %s", exc.message)
                self._queue(GatewayError(code=exc.code, message=exc.message))
                self._sender.close_after_sending(CLOSE_TRY_AGAIN_LATER, "NATS unavailable")

    async def _on_text(self, text: str) -> None:
        control = parse_text(text)
        if self.dialect is None:
            self.dialect = dialect_of(text, control)
        await self._on_control(control)

    async def _on_binary(self, data: bytes) -> None:
        if len(data) > self.config.max_chunk_bytes:
            raise ProtocolError(
                f"audio frame of {len(data)} bytes is larger than "
                f"STT_MAX_CHUNK_BYTES={self.config.max_chunk_bytes}",
                code=ErrorCode.CHUNK_TOO_LARGE,
            )
        parsed = parse_binary(data)
        if isinstance(parsed, bytes):
            if self._idle is not None:
                self._idle.cancel()
            segment = await self._workers.active()
            chunk = protocol.Chunk(audio=parsed, seq=segment.next_seq)
            segment.next_seq += 1
            await self._workers.publish(segment, chunk)
            return
        if self.dialect is None:
            self.dialect = "parakeet"
        await self._on_control(parsed)

    async def _on_control(self, control: Any) -> None:
        match control:
            case Start():
                workers = self._workers
                sample_rate = control.sample_rate or workers.start.sample_rate
                check_format(sample_rate, control.channels)
                workers.start = msgspec.structs.replace(control, sample_rate=sample_rate)
                current = self._segments.current
                await workers.update(workers.start_for(current.session_id if current else None))
            case protocol.StateChange():
                start = self._workers.start
                self._workers.start = msgspec.structs.replace(start, state=control.state)
                await self._workers.update(control)
            case End():
                await self.end_session()
            case Flush():
                await self._end_current(flush=True)
            case Reset():
                await self._end_current(flush=False)

    async def _end_current(self, *, flush: bool) -> None:
        segment = self._segments.end_current()
        if segment is not None:
            segment.owed_finals += flush
            await self._workers.publish(segment, protocol.End())
        elif flush:
            # Nothing said since the last flush: answer after the sessions still finishing.
            finishing = self._segments.finishing()
            if finishing:
                finishing[-1].owed_finals += 1
            else:
                self._queue(EmptyFinal(session_id=self.client_id))

    @property
    def _client_now(self) -> str | None:
        """The client's name for the open session, if one is open."""
        current = self._segments.current
        return current.client_id if current else None

    # ------------------------------------------------------------ worker -> client

    def _on_result(self, segment: Segment, delivery: Delivery) -> None:
        """Called from the subscription's dispatch: never awaits, so results keep their order
        and nothing blocks."""
        message = delivery.message
        if isinstance(message, ProtocolError):
            logger.warning("gateway: unusable result on %s: %s", delivery.subject, message)
            return
        if segment.closed or self._finished:
            return
        message = segment.as_client_sees(message)
        if self._segments.oldest_open() is segment:
            self._deliver(segment, message)
        elif len(segment.held) < self.config.max_queue:
            segment.held.append(message)
        else:
            # A later session's results wait for an earlier one's end; past the bound the
            # client is as good as not reading.
            self._sender.too_slow(f"{self.config.max_queue} results held behind an open session")

    def _deliver(self, segment: Segment, message: ServerMessage) -> None:
        if isinstance(message, Transcription) and message.is_final and message.end_reason == "end":
            segment.owed_finals = max(0, segment.owed_finals - 1)
        if not isinstance(message, SessionClosed):
            self._queue(message)
            return
        if segment is self._segments.current:
            # The worker ended the open session on its own (idle, age): the next audio opens
            # a new one, not goes to a closed one nobody reads.
            self._segments.end_current()
            if went_on(message, segment.next_seq - 1):
                # Frames sent while it closed reopened it on the worker: they are not read.
                late = segment.next_seq - 1 - (message.last_seq or 0)
                logger.warning("gateway: %d audio frames came after the worker closed", late)
        for _ in range(segment.owed_finals):
            self._queue(EmptyFinal(session_id=segment.client_id))
        self._queue(message)
        segment.closed = True
        # The next session's results may flow now, up to one that is still open.
        following = self._segments.oldest_open()
        if following is not None:
            held, following.held = following.held, []
            for each in held:
                self._deliver(following, each)
        else:
            self._close_when_done()

    def _queue(self, message: Outgoing) -> None:
        if self._sender.close is None:
            self._sender.push(self._frames(message))

    def _frames(self, message: Outgoing) -> list[tuple[str, bool]]:
        """The frames `message` becomes for the client, each with whether it may be dropped
        (a partial); other dialects of the gateway (realtime.py) render their own."""
        frame = render(message, self.dialect or "native")
        return [] if frame is None else [(frame, is_partial(message))]

    def _close_when_done(self) -> None:
        """After `end`: close once every worker session has closed and its results are sent."""
        if self._ending and self._segments.all_closed():
            self._sender.close_after_sending(*self._ending)
