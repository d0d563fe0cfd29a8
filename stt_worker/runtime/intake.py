"""The subscription's side of the worker: what it does with each message as it arrives.

`Intake.subscribe` subscribes `Intake.on_message`, the subscription callback. That does only
what is cheap and must happen in arrival order: skip a durable redelivery, check the session
id, decode once, and offer the message to its session's inbox (`inbox.Inboxes`: the session's
budgets and bounds); the worker's `_handle` does the rest in the session's own task, so no
session waits behind another's backlog. What is refused is answered here (a bad message at
once, ``rate_limited`` at most once a second) and, in durable mode, acknowledged so it is not
replayed; a session refused for its pace has its next messages shed unread for a moment
(`shedding.Shedder`). Durable mode waits for room in a full inbox instead of refusing a
message within its session's budgets, while the session's task keeps taking messages: a
backlog the stream replays at once (a partition taken over) is slowed down, not lost, and
JetStream holds the rest; a flood over its budgets is still refused at once.
`Intake.dropped` answers the NATS client's slow-consumer reports, also at most once a second
per session, since the client reports each dropped message on its read path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stt_worker.config import Settings
from stt_worker.core.admission import RateLimits
from stt_worker.core.errors import SttError
from stt_worker.core.protocol import ErrorCode, check_session_id, decode_client_message
from stt_worker.runtime.delivery import Delivery
from stt_worker.runtime.inbox import Handler, Inboxes
from stt_worker.runtime.own_connection import OwnConnection
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

# Tell session `session_id` of `error` (publish, log, count): the worker's `_reject`, with
# the refused message (None for a drop), whose headers carry the publisher's trace. False
# when the reply was held back: the session (or subject) is past its share of replies.
Refuse = Callable[[str, SttError, float, Msg | None], Awaitable[bool]]
Callback = Callable[[], Awaitable[None]]


def rate_limits(settings: Settings) -> RateLimits:
    return RateLimits(
        max_audio_speed=settings.max_audio_speed,
        audio_burst_s=settings.audio_burst_s,
        max_control_per_s=settings.max_control_per_s,
        flood_factor=settings.flood_factor,
    )


class Intake:
    """Admission of each message the subscription hands over; `handle` serves admitted ones
    in their session's task."""

    def __init__(
        self,
        settings: Settings,
        delivery: Delivery,
        metrics: Metrics,
        *,
        handle: Handler,
        refuse: Refuse,
    ) -> None:
        self._max_session_id_chars = settings.max_session_id_chars
        self._delivery = delivery
        # Durable mode waits for a full inbox (the stream holds what follows), up to this
        # long per message the session takes; core NATS refuses at once.
        self._patience_s = settings.ack_wait_s / 4 if settings.durable else None
        self._refuse = refuse
        self._limits = rate_limits(settings)
        self.shedder = Shedder(metrics)
        self.own: OwnConnection | None = None
        if settings.takes_session_connections():
            self.own = OwnConnection(settings, self._take)
        self.inboxes = Inboxes(
            self._limits,
            max_messages=settings.session_inbox_messages,
            max_bytes=settings.session_inbox_bytes,
            # Budgets outlive their sessions by seconds (until they refill): room for churn.
            max_entries=2 * settings.max_sessions + 1000,
            handle=handle,
            metrics=metrics,
        )

    async def subscribe(
        self, nc: Client, subjects: list[str], events: tuple[Callback, Callback]
    ) -> list[Subscription]:
        """Subscribe `on_message` to `subjects`, with the connection guarded from floods (and
        with ``STT_SESSION_CONNECTIONS`` the sessions' own connection made, with `events`,
        the worker's disconnected and reconnected callbacks: its sessions are told that
        audio may be lost when it comes back, as for the first)."""
        self._delivery.guard(nc, self.shedder)
        if self.own is not None:
            await self.own.start(nc, self.shedder, events)
        return await self._delivery.subscribe(nc, subjects, self.on_message)

    async def stop_taking(self, subs: list[Subscription]) -> None:
        """SIGTERM: handle what was received on every connection, take nothing more."""
        await self._delivery.stop_taking(subs)
        if self.own is not None:
            await self.own.stop()

    def closed(self, session_id: str) -> None:
        if self.own is not None:
            self.own.closed(session_id, time.time())

    async def on_message(self, msg: Msg) -> None:
        if not await self._delivery.admit(msg):
            return
        if self.own is not None:
            await self.own.from_wildcard(msg)  # taken here, or from the session's own
        else:
            await self._take(msg)

    async def _take(self, msg: Msg) -> None:
        # The session id is the subject's last token, partitioned or not.
        session_id = msg.subject.rsplit(".", 1)[-1]
        now = time.time()
        patience_s = self._patience_s
        try:
            check_session_id(session_id, self._max_session_id_chars)
            message = decode_client_message(msg.data)
            paced_at = self._delivery.paced_at(msg, now)
            verdict = self.inboxes.offer(
                session_id, message, msg, now, paced_at, may_wait=patience_s is not None
            )
            if verdict is None and patience_s is not None:
                verdict = await self.inboxes.wait_for_room(
                    session_id, message, msg, now, paced_at, patience_s
                )
        except Exception as exc:
            if isinstance(exc, SttError):
                error = exc
            else:
                logger.exception("unexpected failure admitting a message")
                error = SttError(f"internal error: {exc!r}", code=ErrorCode.INTERNAL_ERROR)
            if self.own is not None:
                self.own.refused(session_id, now)
            if not await self._refuse(session_id, error, now, msg):
                # Past its share of error replies, the subject is flooding bad messages:
                # shed its next ones unread, as for a session over its budget, so that the
                # flood cannot get the worker cut off as a slow consumer.
                self.shedder.shed(msg.subject)
            await self._delivery.reject(msg)
            return
        if verdict is True:
            self.shedder.release(msg.subject)
            if self.own is not None:
                self.own.admitted(session_id, msg.subject, now)
            return
        if self.own is not None:
            self.own.refused(session_id, now)
        self.shedder.shed(msg.subject)  # its next messages go before they cost a callback
        await self._delivery.reject(msg)  # durable mode: a refused message is not replayed
        if verdict is not False:
            shed_messages, shed_bytes = self.shedder.take(msg.subject)
            text = verdict.describe(self._limits, shed_messages, shed_bytes)
            told = verdict.total + shed_messages
            error = SttError(text, code=ErrorCode.RATE_LIMITED, messages=told)
            await self._refuse(session_id, error, now, msg)

    def stop_waiting(self) -> None:
        """SIGTERM: a full inbox refuses again, so that draining the subscription (every
        message it buffered through admission) cannot take as long as the backlog."""
        self._patience_s = None

    async def tick(self, now: float) -> None:
        """Every tick: settle moves between connections whose marker was lost, and send the
        ``rate_limited`` sums held back by their interval, so a flood that stops is still
        told of its last second."""
        if self.own is not None:
            await self.own.tick(now)
        for subject, nbytes in self.shedder.arrivals():
            self.inboxes.arrived_unread(subject.rsplit(".", 1)[-1], nbytes, now)
        for subject, messages, nbytes in self.shedder.leftovers():
            self.inboxes.shed(subject.rsplit(".", 1)[-1], messages, nbytes, now)
        for session_id, report in self.inboxes.overdue(now):
            text = report.describe(self._limits)
            error = SttError(text, code=ErrorCode.RATE_LIMITED, messages=report.total)
            await self._refuse(session_id, error, now, None)

    async def dropped(self, subject: str) -> None:
        """The NATS client dropped a message on `subject` (its buffer was full)."""
        session_id = subject.rsplit(".", 1)[-1]
        now = time.time()
        count = self.inboxes.dropped(session_id, now)
        if count:
            error = SttError(
                f"worker too slow: {count} message(s) of this session dropped by the NATS client",
                code=ErrorCode.AUDIO_DROPPED,
            )
            await self._refuse(session_id, error, now, None)
