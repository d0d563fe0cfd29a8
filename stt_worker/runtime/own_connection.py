"""Sessions' own subscriptions on a second NATS connection (``STT_SESSION_CONNECTIONS``).

With core NATS every message for the worker waits in nats-server's one queue for its
connection, in order: beside a publisher flooding one subject, that queue stays tens of MB
deep and every honest session's audio waits behind it (docs/operations.md, "Untrusted
publishers"). Here the wildcard subscription stays on the worker's connection and finds new
sessions; a session that has kept to its budgets for `SETTLE_S` is also subscribed by its own
subject on a second connection, which no other subject's flood reaches, and its messages
are taken from there. A session refused for its pace goes back to the wildcard for good,
where its excess waits only behind itself and other refused sessions.

Each move is cut at a marker that both connections receive (`core/handover.py`): a message
on the session's own subject with a `MARKER_HEADER` and no payload, published on the second
connection right after its ``SUB`` (or right before its ``UNSUB``), so that nats-server
routes it after the one and before the other. On the session's subject it comes through the
same subscription (one queue, in order, in nats-py) as the messages it cuts, on both
connections; a subscription of its own would be dispatched by a task of its own, out of order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stt_worker.config import Settings
from stt_worker.core.handover import MARKER_HEADER, Handover, Source
from stt_worker.runtime.connection import connect, flush_in_order, log_error
from stt_worker.runtime.delivery import drain_subscriptions
from stt_worker.runtime.shedding import Shedder

logger = logging.getLogger(__name__)

# How long a session keeps to its budgets before it gets its own subscription: a flood
# starts at once, and a session moved and moved back costs two markers for nothing.
SETTLE_S = 1.0
# A move whose marker has not come through both connections by then is settled without it
# (lost with a reconnect): see `Handover.expire`.
MARKER_WAIT_S = 10.0
# nats-py's words for the server's -ERR on a publish this connection may not make.
_PUBLISH_DENIED = "permissions violation for publish"

Take = Callable[[Msg], Awaitable[None]]


def session_of(msg: Msg) -> str:
    return msg.subject.rsplit(".", 1)[-1]


class OwnConnection:
    """The second connection, the sessions subscribed on it and their moves."""

    def __init__(self, settings: Settings, take: Take) -> None:
        self._settings = settings
        self._take = take  # admission of a message, from whichever connection it is taken
        self._handover: Handover[Msg] = Handover(max_held=settings.session_inbox_messages)
        self._worker = uuid.uuid4().hex  # whose markers: another's are not ours to take
        self._nc: Client | None = None
        # Per session on (or moving to) its own subscription: it, or None while it is made.
        self._subs: dict[str, Subscription | None] = {}
        # Both bounded like the inboxes' budgets (a flood of made-up ids must not grow them).
        self._max_entries = 2 * settings.max_sessions + 1000
        self._first_admitted: dict[str, float] = {}
        self._refused: dict[str, None] = {}
        self._moves: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._denied = False  # NATS refuses this worker's markers: no more moves

    async def start(
        self,
        wildcard: Client,
        shedder: Shedder,
        events: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]],
    ) -> None:
        """Connect the second connection, on the wildcard's server."""
        # The same server as the wildcard's: a marker cuts two queues of one nats-server.
        server = wildcard.connected_url.geturl() if wildcard.connected_url else None
        settings = self._settings.model_copy(update={"nats_url": server or self._settings.nats_url})
        disconnected, reconnected = events
        self._nc = nc = await connect(
            settings,
            "stt-streaming-sessions",
            error_cb=self._error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
        shedder.install(nc)  # a session over its pace on it is shed as on the first

    async def _error(self, exc: Exception) -> None:
        # Without publish permission on the audio subjects no marker is routed and every move
        # would wait its MARKER_WAIT_S and be tried again, each logging a violation. Moves
        # stop instead; those under way expire onto the wildcard, which has every message.
        if _PUBLISH_DENIED in str(exc).lower() and not self._denied:
            self._denied = True
            logger.error(
                "sessions stay on the wildcard subscription: NATS denies this worker publishing "
                "its handover markers on the audio subjects (%s). Grant it publish there, or "
                "set STT_SESSION_CONNECTIONS=false (docs/operations.md)",
                exc,
            )
            return
        await log_error(exc)

    @property
    def sessions(self) -> int:
        """Sessions taken from (or moving to) their own subscription."""
        return len(self._subs)

    def taken_from_own(self, session_id: str) -> bool:
        """Whether `session_id`'s messages come from its own subscription now."""
        return self._handover.source(session_id) is Source.OWN

    async def from_wildcard(self, msg: Msg) -> None:
        await self._from(Source.WILDCARD, msg)

    async def _from_own(self, msg: Msg) -> None:
        await self._from(Source.OWN, msg)

    async def _from(self, source: Source, msg: Msg) -> None:
        session_id = session_of(msg)
        marker = msg.headers.get(MARKER_HEADER) if msg.headers else None
        if marker is None:
            for each in self._handover.take(session_id, source, msg):
                await self._take(each)
            return
        worker, _, number = marker.partition(":")
        # Ours, and for this session: a publisher cannot move another session.
        if worker != self._worker or not number.isdigit():
            return
        if self._handover.moves(int(number)) != session_id:
            return
        released = self._handover.marker(source, int(number))
        if released is not None:
            for each in released.messages:
                await self._take(each)

    def admitted(self, session_id: str, subject: str, now: float) -> None:
        """A message of `session_id` (on `subject`) was admitted: once the session has kept to
        its budgets for `SETTLE_S`, move it to its own subscription."""
        if self._nc is None or self._denied:
            return
        if session_id in self._subs or session_id in self._refused:
            return
        first = self._first_admitted.get(session_id)
        if first is None:
            _bounded_put(self._first_admitted, session_id, now, self._max_entries)
            return
        if now - first < SETTLE_S:
            return
        marker = self._handover.switch(session_id, Source.OWN, now)
        if marker is not None:
            self._subs[session_id] = None  # being made
            self._spawn(self._subscribe(session_id, subject, marker))

    def refused(self, session_id: str, now: float) -> None:
        """A message of `session_id` was refused: back to the wildcard, for good."""
        _bounded_put(self._refused, session_id, None, self._max_entries)
        self._move_back(session_id, now)

    def closed(self, session_id: str, now: float) -> None:
        """The session closed. One taken from its own subscription moves back at a marker
        like a refused one: the wildcard's copies of what it already handled are still on
        their way (behind a flood, seconds late), and taken again they would open a ghost
        session. One moving back finishes its move; any other is forgotten."""
        self._first_admitted.pop(session_id, None)
        self._refused.pop(session_id, None)
        handover = self._handover
        if self._stopped:  # SIGTERM: both connections are drained already
            handover.forget(session_id)
            self._subs.pop(session_id, None)
            return
        if handover.source(session_id) is Source.OWN or handover.switching_back(session_id):
            self._move_back(session_id, now)
            return
        handover.forget(session_id)
        sub = self._subs.pop(session_id, None)
        if sub is not None:
            self._spawn(self._unsubscribe(sub))  # closed while it was being made

    async def tick(self, now: float) -> None:
        if self._stopped:
            return
        for session_id, released in self._handover.expire(now, MARKER_WAIT_S):
            logger.warning("session moved without its marker", extra={"session_id": session_id})
            for each in released.messages:
                await self._take(each)
        handover = self._handover
        for session_id, sub in list(self._subs.items()):
            if sub is None or handover.switching(session_id):
                continue
            if handover.source(session_id) is Source.WILDCARD:
                # A move given up (`Handover._settle`): its subscription goes; tried again.
                del self._subs[session_id]
                self._first_admitted.pop(session_id, None)
                self._spawn(self._unsubscribe(sub))
            elif session_id in self._refused:
                self._move_back(session_id, now)  # refused while it was moving

    async def stop(self) -> None:
        """SIGTERM, after the wildcard's subscriptions are drained: drain the sessions' own,
        then close the connection."""
        self._stopped = True
        for task in list(self._moves):
            await task
        await drain_subscriptions(sub for sub in self._subs.values() if sub is not None)
        if self._nc is not None:
            await self._nc.drain()

    def _move_back(self, session_id: str, now: float) -> None:
        sub = self._subs.get(session_id)
        if sub is None or self._handover.source(session_id) is not Source.OWN:
            return  # on the wildcard, or its subscription still being made
        marker = self._handover.switch(session_id, Source.WILDCARD, now)
        if marker is None:
            return  # a move under way: the next tick tries again
        del self._subs[session_id]
        self._spawn(self._unsubscribe(sub, marker))

    async def _subscribe(self, session_id: str, subject: str, marker: int) -> None:
        assert self._nc is not None
        limit = self._settings.pending_msgs_limit
        try:
            sub = await self._nc.subscribe(subject, cb=self._from_own, pending_msgs_limit=limit)
            await self._publish_marker(subject, marker)
        except Exception:
            logger.exception("could not subscribe a session on its own connection")
            return  # the move expires, lossless: the wildcard has every message
        if session_id in self._subs:
            self._subs[session_id] = sub
        else:
            await sub.unsubscribe()  # closed meanwhile

    async def _unsubscribe(self, sub: Subscription, marker: int | None = None) -> None:
        assert self._nc is not None
        try:
            if marker is None:
                await sub.unsubscribe()
                return
            # The marker first, so nats-server routes it while we still listen; then a drain,
            # not an unsubscribe: nats-py would drop what arrives for a removed subscription,
            # the marker with it, and a drain takes what the server routed before its PONG
            # (the marker, once written: the drain's PING would overtake it in nats-py).
            await self._publish_marker(sub.subject, marker)
            await flush_in_order(self._nc)
            await sub.drain()
        except Exception:
            logger.exception("could not unsubscribe a session's own subscription")

    async def _publish_marker(self, subject: str, marker: int) -> None:
        assert self._nc is not None
        headers = {MARKER_HEADER: f"{self._worker}:{marker}"}
        await self._nc.publish(subject, b"", headers=headers)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)


def _bounded_put(entries: dict[str, Any], key: str, value: Any, max_entries: int) -> None:
    """Insert, forgetting the oldest entry past `max_entries`."""
    if len(entries) >= max_entries:
        del entries[next(iter(entries))]
    entries[key] = value
