"""Bridge: one WebSocket connection carried to worker sessions over NATS, and back.

Frames in: audio becomes ``chunk`` messages (raw ``audio`` bytes and a ``seq``), controls
become ``start`` / ``state_change`` / ``end``. A flush or reset ends the current worker session
(the worker finalises its pending speech) and the next audio opens a new one, ``<id>~2``,
``<id>~3``..., whose results come back on the same socket: the worker is not changed, and
it never drops accepted audio. The worker's ids are the gateway's (namespace.py); frames
going out carry the client's own name for the session instead.

Results out: each session's ``ai.voice.transcription.{id}`` messages, decoded into the
protocol's typed messages (`runtime.bus`), rendered for the client's dialect (dialect.py)
and queued in a bounded `Outbox`; a sender task writes them as fast as the client reads.
A client too slow to take its finals is closed with 1013 (see outbox.py).

Bounds on what one connection costs: a connection with no audio within
``first_audio_timeout_s`` is closed (1008 ``idle_timeout``); the gateway's error frames are
cut in size (dialect.py) and spent from an `ErrorBudget` (limits.py), so bad frames sent as
fast as a client can earn replies at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from stt_worker.core import protocol
from stt_worker.core.audio import check_format
from stt_worker.core.errors import ErrorCode, OverloadedError, ProtocolError
from stt_worker.core.protocol import Error, ServerMessage, SessionClosed, Transcription
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
from stt_worker.gateway.outbox import Outbox
from stt_worker.runtime import bus
from stt_worker.runtime.bus import BusError, Delivery, NatsClient, Subscription

logger = logging.getLogger(__name__)

# What a send or receive raises when the client has gone (uvicorn's ClientDisconnected is an
# OSError).
_GONE = (WebSocketDisconnect, OSError)

# Joins a connection's id and the number of its next worker session ("ws-1f3a~2"); client ids
# may not hold it, so no client can pick another connection's later session.
SEGMENT_MARK = "~"

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


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


@dataclass(slots=True)
class GatewayStats:
    """Counters over all connections, shown by /health."""

    connections_total: int = 0
    dropped_partials: int = 0
    overflow_closes: int = 0
    idle_closes: int = 0
    errors_withheld: int = 0


@dataclass(slots=True, eq=False)
class _Segment:
    """One worker session of the connection: its worker id and the client's name for it."""

    session_id: str
    client_id: str
    subscription: Subscription | None = None
    next_seq: int = 0
    # Finals owed to flushes: the worker's final with end_reason "end" pays one; an empty
    # final pays each one left when the session closes.
    owed_finals: int = 0
    closed: bool = False
    # Results that arrived while an earlier session of the connection was still open: held
    # so that the client reads results in the order it spoke.
    held: list[ServerMessage] = field(default_factory=list)


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
        # The connection's `start`, sent again for each worker session it opens.
        self._start = protocol.Start(sample_rate=self.sample_rate)
        self._outbox = Outbox(self.config.max_queue)
        self._wake = asyncio.Event()
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._opened = 0
        # Set by `end`: the close that follows the last results.
        self._ending: tuple[int, str] | None = None
        self._close: tuple[int, str] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._finished = False
        self._told_ended = False
        self._errors = ErrorBudget(self.config.error_burst, self.config.error_frames_per_s)
        self._idle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the accepted socket until the client leaves or the session ends."""
        self._sender = asyncio.create_task(self._send_frames())
        receiver = asyncio.create_task(self._receive_frames())
        self._idle = asyncio.get_running_loop().call_later(
            self.config.first_audio_timeout_s, self._no_audio
        )
        tasks = (self._sender, receiver)
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
                await self._close_socket()
            finally:
                self.closed.set()
        for outcome in outcomes:
            # A client that vanished mid-frame is an ordinary end; anything else is a bug.
            if isinstance(outcome, Exception) and not isinstance(outcome, _GONE):
                raise outcome

    @property
    def queued_chars(self) -> int:
        """What this connection holds for its client (result and error frames)."""
        return self._outbox.queued_chars

    async def end_session(self, code: int = CLOSE_NORMAL, reason: str = "session ended") -> None:
        """Like the client's ``end``: finalise, send the last results, then close."""
        if self._ending is not None:
            return
        self._ending = (code, reason)
        await self._end_current(flush=False)
        self._close_when_done()

    def _no_audio(self) -> None:
        """A socket that holds a connection slot without speaking gives it back."""
        if self._close is not None or self._ending is not None:
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
        self._close_after_sending(CLOSE_POLICY_VIOLATION, "no audio")

    def abort(self, code: int, reason: str) -> None:
        """Close now: queued frames are not sent."""
        if self._close is None:
            self._close = (code, reason)
        if self._sender is not None:
            self._sender.cancel()

    async def _end_all(self) -> None:
        """The socket is gone: end the open worker session, stop listening to all of them."""
        with contextlib.suppress(BusError):
            await self._end_current(flush=False)
        for segment in self._segments:
            if segment.subscription is not None:
                with contextlib.suppress(BusError):
                    await bus.unsubscribe(segment.subscription)
        self._segments.clear()

    async def _close_socket(self) -> None:
        ws = self.websocket
        if WebSocketState.DISCONNECTED in (ws.client_state, ws.application_state):
            return
        code, reason = self._close or (CLOSE_NORMAL, "")
        # A client that never reads holds the close frame back; do not wait for it forever.
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
            await asyncio.wait_for(ws.close(code, reason), self.config.close_timeout_s)

    # ------------------------------------------------------------ client -> worker

    async def _receive_frames(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self._close is not None:
                continue  # closing: the sender finishes what is queued, then closes
            if len(self._outbox):
                # Frames already received return without suspending: let the sender keep
                # pace, or a burst of error frames would fill the outbox before it runs.
                await asyncio.sleep(0)
            try:
                if self._ending is not None:
                    self._refuse_after_end()
                    continue
                if message.get("text") is not None:
                    await self._on_text(message["text"])
                else:
                    await self._on_binary(message.get("bytes") or b"")
            except (ProtocolError, OverloadedError) as exc:
                self._refuse_frame(exc)
            except BusError as exc:
                logger.warning("gateway: publish failed: %s", exc.message)
                self._queue(GatewayError(code=exc.code, message=exc.message))
                self._close_after_sending(CLOSE_TRY_AGAIN_LATER, "NATS unavailable")

    def _refuse_frame(self, exc: ProtocolError | OverloadedError) -> None:
        """An error frame for a frame not used, from the connection's error budget."""
        if not self._errors.spend(time.monotonic()):
            self.stats.errors_withheld += 1
            if self._errors.withheld == 1:
                logger.info(
                    "gateway: error frames past the budget; counting, not sending",
                    extra={"session_id": self.session_id},
                )
            return
        message = exc.message
        withheld = self._errors.take_withheld()
        if withheld:
            message = f"{message} ({withheld} earlier error frames not sent: too many)"
        self._queue(GatewayError(code=exc.code, message=message, session_id=self._client_now))

    def _refuse_after_end(self) -> None:
        """Frames after `end` (or shutdown) are not used: said once, not once per frame."""
        if not self._told_ended:
            self._told_ended = True
            raise ProtocolError(
                "the session has ended; frames after 'end' are not used",
                code=ErrorCode.SESSION_ENDED,
            )

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
            segment = await self._active()
            chunk = protocol.Chunk(audio=parsed, seq=segment.next_seq)
            segment.next_seq += 1
            await self._publish(segment, chunk)
            return
        if self.dialect is None:
            self.dialect = "parakeet"
        await self._on_control(parsed)

    async def _on_control(self, control: Any) -> None:
        match control:
            case Start():
                sample_rate = control.sample_rate or self._start.sample_rate
                check_format(sample_rate, control.channels)
                self._start = msgspec.structs.replace(control, sample_rate=sample_rate)
                await self._update(self._start_for(self._current_id))
            case protocol.StateChange():
                self._start = msgspec.structs.replace(self._start, state=control.state)
                await self._update(control)
            case End():
                await self.end_session()
            case Flush():
                await self._end_current(flush=True)
            case Reset():
                await self._end_current(flush=False)

    async def _update(self, message: protocol.Start | protocol.StateChange) -> None:
        """Opening a session sends the current `start`; an open one gets `message`."""
        if self._current is None:
            await self._active()
        else:
            await self._publish(self._current, message)

    async def _active(self) -> _Segment:
        """The open worker session; the first audio or control after a flush opens one."""
        if self._current is not None:
            return self._current
        pending = [segment for segment in self._segments if not segment.closed]
        if len(pending) >= self.config.max_pending_sessions:
            raise OverloadedError(
                f"{len(pending)} worker sessions of this connection are still finishing "
                "(STT_GATEWAY_MAX_PENDING_SESSIONS); frame not used",
                code=ErrorCode.OVERLOADED,
            )
        await self._reap()
        self._opened += 1
        suffix = "" if self._opened == 1 else f"{SEGMENT_MARK}{self._opened}"
        session_id = f"{self.session_id}{suffix}"
        segment = _Segment(session_id, f"{self.client_id}{suffix}")
        # Subscribed before `start` leaves, so no result can be missed.
        segment.subscription = await bus.subscribe(
            self.nc,
            f"{self.config.transcription_prefix}.{session_id}",
            functools.partial(self._on_result, segment),
        )
        self._segments.append(segment)
        self._current = segment
        await self._publish(segment, self._start_for(session_id))
        return segment

    async def _end_current(self, *, flush: bool) -> None:
        segment, self._current = self._current, None
        if segment is not None:
            segment.owed_finals += flush
            await self._publish(segment, protocol.End())
        elif flush:
            # Nothing said since the last flush: answer after the sessions still finishing.
            finishing = [each for each in self._segments if not each.closed]
            if finishing:
                finishing[-1].owed_finals += 1
            else:
                self._queue(EmptyFinal(session_id=self.client_id))

    async def _publish(self, segment: _Segment, message: protocol.ClientMessage) -> None:
        await bus.publish(self.nc, f"{self.config.stream_prefix}.{segment.session_id}", message)

    async def _reap(self) -> None:
        """Stop listening to worker sessions that have closed."""
        for segment in [each for each in self._segments if each.closed]:
            self._segments.remove(segment)
            if segment.subscription is not None:
                await bus.unsubscribe(segment.subscription)

    def _start_for(self, session_id: str | None) -> protocol.Start:
        return msgspec.structs.replace(self._start, session_id=session_id)

    @property
    def _current_id(self) -> str | None:
        return self._current.session_id if self._current else None

    @property
    def _client_now(self) -> str | None:
        """The client's name for the open session, if one is open."""
        return self._current.client_id if self._current else None

    # ------------------------------------------------------------ worker -> client

    def _on_result(self, segment: _Segment, delivery: Delivery) -> None:
        """Called from the subscription's dispatch: never awaits, so results keep their order
        and nothing blocks."""
        message = delivery.message
        if isinstance(message, ProtocolError):
            logger.warning("gateway: unusable result on %s: %s", delivery.subject, message)
            return
        if segment.closed or self._finished:
            return
        message = _as_client_sees(message, segment)
        if self._oldest_open() is segment:
            self._deliver(segment, message)
        elif len(segment.held) < self.config.max_queue:
            segment.held.append(message)
        else:
            self._too_slow()

    def _deliver(self, segment: _Segment, message: ServerMessage) -> None:
        if isinstance(message, Transcription) and message.is_final and message.end_reason == "end":
            segment.owed_finals = max(0, segment.owed_finals - 1)
        if not isinstance(message, SessionClosed):
            self._queue(message)
            return
        for _ in range(segment.owed_finals):
            self._queue(EmptyFinal(session_id=segment.client_id))
        self._queue(message)
        segment.closed = True
        # The next session's results may flow now, up to one that is still open.
        following = self._oldest_open()
        if following is not None:
            held, following.held = following.held, []
            for each in held:
                self._deliver(following, each)
        else:
            self._close_when_done()

    def _oldest_open(self) -> _Segment | None:
        return next((each for each in self._segments if not each.closed), None)

    def _queue(self, message: Outgoing) -> None:
        if self._close is not None:
            return
        for frame, partial in self._frames(message):
            dropped = self._outbox.dropped_partials
            accepted = self._outbox.push(frame, partial=partial)
            self.stats.dropped_partials += self._outbox.dropped_partials - dropped
            if not accepted:
                self.stats.overflow_closes += 1
                logger.warning("gateway: client of session %s too slow; closing", self.session_id)
                self.abort(
                    CLOSE_TRY_AGAIN_LATER,
                    f"client too slow: {self.config.max_queue} results unsent",
                )
                return
        self._wake.set()

    def _frames(self, message: Outgoing) -> list[tuple[str, bool]]:
        """The frames `message` becomes for the client, each with whether it may be dropped
        (a partial); other dialects of the gateway (realtime.py) render their own."""
        frame = render(message, self.dialect or "native")
        return [] if frame is None else [(frame, is_partial(message))]

    def _close_when_done(self) -> None:
        """After `end`: close once every worker session has closed and its results are sent."""
        ending = self._ending
        if ending and self._current is None and all(each.closed for each in self._segments):
            self._close_after_sending(*ending)

    def _close_after_sending(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        self._wake.set()

    async def _send_frames(self) -> None:
        while True:
            frame = self._outbox.pop()
            if frame is None:
                if self._close is not None:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.websocket.send_text(frame)


def _as_client_sees(message: ServerMessage, segment: _Segment) -> ServerMessage:
    """`message` under the client's name for its session: the worker's id is the gateway's."""
    if isinstance(message, Error):
        text = message.message.replace(segment.session_id, segment.client_id)
        return msgspec.structs.replace(message, session_id=segment.client_id, message=text)
    return msgspec.structs.replace(message, session_id=segment.client_id)
