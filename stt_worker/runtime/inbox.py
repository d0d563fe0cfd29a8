"""Per-session inboxes: what the subscription admits waits here, one bounded queue per session,
served by that session's own task.

The subscription callback only admits (`Inboxes.offer`): the session's budgets
(`core/admission.Admission`) and its inbox's bounds, both cheap and done in arrival order. The
costly work (resampling, echo cancellation on the DSP threads, VAD, the session's state
machine) runs in the session's task, one message at a time, so a session's messages keep their
order (``end`` after its audio) and one session's backlog waits behind itself alone: each task
gives the loop back after `SLICE_S` of work, and a task waiting on a DSP thread lets the
others run.

A refused message (over budget, or an inbox full) is dropped, counted in
`stt_rate_limited_total` and `stt_rate_limited_audio_seconds_total`, and reported to its
session at most once a second. An entry whose budgets are full again and whose inbox is empty
is forgotten (it is then the same as a fresh one), so the table holds only sessions active in
the last few seconds, and at most `max_entries`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from stt_worker.core.admission import Admission, RateLimits, RefusalNotice, Refusals, Traffic
from stt_worker.core.errors import OverloadedError
from stt_worker.core.protocol import ClientMessage, ErrorCode
from stt_worker.runtime.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

# A session's task gives the loop back after this much work, so others' messages interleave.
SLICE_S = 0.005
# How often the table is swept of entries that are the same as fresh ones.
_SWEEP_EVERY_S = 1.0


Handler = Callable[[str, ClientMessage, Msg, float], Awaitable[None]]


class _Inbox:
    __slots__ = (
        "admission",
        "drops",
        "handling_since",
        "queue",
        "queued_bytes",
        "stuck",
        "taken",
        "task",
    )

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.drops = RefusalNotice(admission.limits.notice_interval_s)
        self.queue: collections.deque[tuple[ClientMessage, Msg, float]] = collections.deque()
        self.queued_bytes = 0
        # When the message its task is handling now arrived (None between messages).
        self.handling_since: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.taken = asyncio.Event()  # set as the session's task takes a message
        self.stuck = False  # a wait for room ran out; no more waits until it takes one


class Inboxes:
    """The sessions' inboxes by session id; `handle(session_id, message, msg, now)` is what a
    session's task does with each message, and must not raise."""

    def __init__(
        self,
        limits: RateLimits,
        *,
        max_messages: int,
        max_bytes: int,
        max_entries: int,
        handle: Handler,
        metrics: Metrics,
    ) -> None:
        self._limits = limits
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._handle = handle
        self._metrics = metrics
        self._inboxes: dict[str, _Inbox] = {}
        self._group: asyncio.TaskGroup | None = None
        self._swept_at = 0.0
        # Sessions with refusals not yet told (a notice held back by its interval).
        self._untold: set[str] = set()

    def serve_in(self, group: asyncio.TaskGroup) -> None:
        """Sessions' tasks run in `group` (the worker's) from now on; what was admitted
        before (between subscribing and serving) starts now."""
        self._group = group
        for session_id, inbox in self._inboxes.items():
            if inbox.queue and inbox.task is None:
                self._start(session_id, inbox)

    def offer(
        self,
        session_id: str,
        message: ClientMessage,
        msg: Msg,
        now: float,
        paced_at: float,
        *,
        may_wait: bool = False,
    ) -> Refusals | bool | None:
        """Admit a decoded message: True when queued for its session; else False, or the
        `Refusals` to tell the session now (at most once a second). `paced_at` is the clock
        the budgets run on: now, or when a replayed message was first published. None
        (`may_wait`, durable mode): within its budgets, but its inbox is full; the caller
        waits for room (`wait_for_room`) instead of refusing it."""
        self._sweep(now)
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            if len(self._inboxes) >= self._max_entries:
                raise OverloadedError(
                    f"{len(self._inboxes)} sessions active; session refused",
                    code=ErrorCode.TOO_MANY_SESSIONS,
                )
            inbox = self._inboxes[session_id] = _Inbox(Admission(self._limits, paced_at))
        over = inbox.admission.check(message, paced_at)
        if over is None and not self._room(inbox, msg):
            if may_wait and not inbox.stuck:
                return None  # spent from its budget already: only the room is missing
            over = (Traffic.INBOX, 0.0)
        if over is not None:
            return self._refused(session_id, inbox, over, paced_at)
        self._queue(session_id, inbox, (message, msg, now))
        return True

    async def wait_for_room(
        self,
        session_id: str,
        message: ClientMessage,
        msg: Msg,
        now: float,
        paced_at: float,
        patience_s: float,
    ) -> Refusals | bool:
        """Queue a message `offer` found within its budgets (it answered None) once its
        session's inbox has room (`room`); refused as over the inbox's bounds if the
        session's task stalls meanwhile. Only messages within budget wait: a flood is still
        refused at once, so one session's excess never holds the subscription."""
        await self.room(session_id, msg, patience_s)
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            return self.offer(session_id, message, msg, now, paced_at)  # forgotten: fresh
        if not self._room(inbox, msg):
            return self._refused(session_id, inbox, (Traffic.INBOX, 0.0), paced_at)
        self._queue(session_id, inbox, (message, msg, now))
        return True

    def _refused(
        self, session_id: str, inbox: _Inbox, over: tuple[Traffic, float], paced_at: float
    ) -> Refusals | bool:
        kind, audio_s = over
        self._metrics.rate_limited.labels(kind).inc()
        self._metrics.rate_limited_audio.inc(audio_s)
        report = inbox.admission.notice.refused(kind, audio_s, paced_at)
        if report is None:
            self._untold.add(session_id)
        return report or False

    def _queue(
        self, session_id: str, inbox: _Inbox, item: tuple[ClientMessage, Msg, float]
    ) -> None:
        inbox.queue.append(item)
        inbox.queued_bytes += len(item[1].data)
        if inbox.task is None and self._group is not None:
            self._start(session_id, inbox)

    async def room(self, session_id: str, msg: Msg, patience_s: float) -> None:
        """Wait until the session's inbox has room for `msg`, while its task takes a message
        at least every `patience_s` (durable mode: what comes meanwhile waits in the stream,
        so a replayed backlog is slowed down instead of refused and lost). A session whose
        task stalls is not waited for again until it takes a message: `offer` refuses."""
        inbox = self._inboxes.get(session_id)
        while inbox is not None and not inbox.stuck and not self._room(inbox, msg):
            inbox.taken.clear()
            try:
                await asyncio.wait_for(inbox.taken.wait(), patience_s)
            except TimeoutError:
                inbox.stuck = True

    def shed(self, session_id: str, messages: int, nbytes: int, now: float) -> None:
        """Messages of the session dropped unread (`shedding.Shedder`): told with its next
        notice, like its refusals."""
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            if len(self._inboxes) >= self._max_entries:
                return  # counted in stt_shed_messages_total; no room to tell it
            inbox = self._inboxes[session_id] = _Inbox(Admission(self._limits, now))
        inbox.admission.notice.shed(messages, nbytes)
        self._untold.add(session_id)

    def arrived_unread(self, session_id: str, nbytes: int, now: float) -> None:
        """`nbytes` of the session's messages were just dropped unread: they count towards
        a flood all the same (`Admission.shed`). A subject with no session is left alone."""
        inbox = self._inboxes.get(session_id)
        if inbox is not None:
            inbox.admission.shed(nbytes, now)

    def overdue(self, now: float) -> list[tuple[str, Refusals]]:
        """Sums of refusals whose notice was held back and may go out now: a flood that
        stopped still hears what was refused in its last second."""
        due = []
        for session_id in list(self._untold):
            inbox = self._inboxes.get(session_id)
            report = inbox.admission.notice.due(now) if inbox is not None else None
            if report is not None:
                due.append((session_id, report))
            if inbox is None or not inbox.admission.notice.untold:
                self._untold.discard(session_id)
        return due

    async def wait_served(self, picks: Callable[[str], bool] = lambda session_id: True) -> None:
        """Until every message admitted for the sessions `picks` picks (by id; all of them at a
        drain) has been handled."""
        while tasks := [
            inbox.task
            for session_id, inbox in self._inboxes.items()
            if inbox.task is not None and picks(session_id)
        ]:
            await asyncio.wait(tasks)

    def cancel(self) -> None:
        """Stop every session's task (after a drain that timed out)."""
        for inbox in self._inboxes.values():
            if inbox.task is not None:
                inbox.task.cancel()

    def clock(self, session_id: str, now: float) -> float:
        """The time a session's timeouts are measured at: when its oldest message not yet
        handled arrived (the one its task is handling, else the first queued), else `now`. A
        session working through a backlog (a starved CPU, a flood's bytes read first) has
        input it has not seen yet: the time it waits in the inbox or on a DSP thread is not
        silence, and must not end its utterance (``STT_CHUNK_TIMEOUT``) nor the session
        while its audio is still being worked on."""
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            return now
        if inbox.handling_since is not None:
            return inbox.handling_since
        return inbox.queue[0][2] if inbox.queue else now

    @property
    def queued(self) -> int:
        return sum(len(inbox.queue) for inbox in self._inboxes.values())

    def _room(self, inbox: _Inbox, msg: Msg) -> bool:
        return (
            len(inbox.queue) < self._max_messages
            and inbox.queued_bytes + len(msg.data) <= self._max_bytes
        )

    def _start(self, session_id: str, inbox: _Inbox) -> None:
        assert self._group is not None
        inbox.task = self._group.create_task(self._serve(session_id, inbox), name="inbox")

    async def _serve(self, session_id: str, inbox: _Inbox) -> None:
        try:
            while inbox.queue:
                sliced_at = time.perf_counter()
                while inbox.queue and time.perf_counter() - sliced_at < SLICE_S:
                    message, msg, now = inbox.queue.popleft()
                    inbox.queued_bytes -= len(msg.data)
                    inbox.stuck = False
                    inbox.taken.set()
                    inbox.handling_since = now
                    try:
                        await self._handle(session_id, message, msg, now)
                    finally:
                        inbox.handling_since = None
                await asyncio.sleep(0)  # the other sessions' turn
        finally:
            inbox.task = None

    def dropped(self, session_id: str, now: float) -> int:
        """The NATS client dropped a message of the session (slow consumer): how many to tell
        it of now, 0 until a second has passed since it was last told."""
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            return 1
        report = inbox.drops.refused(Traffic.INBOX, 0.0, now)
        return 0 if report is None else sum(report.messages.values())

    def _sweep(self, now: float) -> None:
        # Every second, and at most 20 times a second while the table is full.
        every_s = _SWEEP_EVERY_S if len(self._inboxes) < self._max_entries else 0.05
        if now - self._swept_at < every_s:
            return
        self._swept_at = now
        idle = [
            session_id
            for session_id, inbox in self._inboxes.items()
            if inbox.task is None
            and not inbox.queue
            and inbox.admission.idle(now)
            and inbox.drops.quiet(now)
        ]
        for session_id in idle:
            del self._inboxes[session_id]
