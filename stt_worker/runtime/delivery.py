"""How audio messages reach the worker and how they are acknowledged: core NATS, or durable
mode's JetStream work queue (STT_DURABLE).

The worker picks a `Delivery` once (`delivery_for`) and asks it the same questions in both
modes: subscribe; admit a message (durable mode drops what this process already took); keep a
session's messages until their results are out (`SessionAcks`, over the sans-I/O
`core.ledger.AckLedger`); acknowledge a rejected message; sweep. Core NATS answers each with
nothing to do.

Durable mode acknowledges a message only once nothing that may still be published depends on
it (the rules are in `core/ledger.py`); the worker publishes a result before it settles the
acknowledgements of the audio it covers, on the same connection, so the server sees them in
that order. An acknowledgement that fails is logged and counted (`stt_ack_failures_total`),
never raised: the message then comes again after ``ack_wait``, and its replay is recognised
by its `source_seq_*`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, Protocol

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.errors import SttError
from stt_worker.core.ledger import AckLedger, Held
from stt_worker.core.protocol import ClientMessage, CloseReason, ServerMessage, Transcription
from stt_worker.core.session import Session
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

MessageHandler = Callable[[Msg], Awaitable[None]]
AckOperation = Literal["ack", "in_progress"]
# A subscription's byte budget per message it may buffer (audio chunks are a few KB).
_BYTES_PER_PENDING_MSG = 4096


class SessionAcks(Protocol):
    """One session's messages not yet acknowledged."""

    # The durable consumer the session's messages came through (None in core NATS): in
    # elastic mode, which partition the session belongs to.
    consumer: str | None

    async def hold(
        self, message: ClientMessage, msg: Msg, *, sample_rate_hz: int, channels: int, now: float
    ) -> None:
        """Keep a message the session accepted (`sample_rate_hz`, `channels`: its format)."""

    async def skip(self, message: ClientMessage, msg: Msg) -> bool:
        """Whether `message` is done with before the session hears it (and acknowledged):
        elastic mode's audio that a final published by the previous owner covered."""

    def stamp(
        self, message: ServerMessage, start_sample: int | None = None
    ) -> ServerMessage | None:
        """The message to publish (a transcript names the stream sequences of its audio), or
        None when it must not be: elastic mode's replay of what was already published.
        `start_sample`: where the utterance an interrupt or error is about begins."""

    async def settle(self, session: Session) -> None:
        """Acknowledge what no result still to come depends on (call after publishing)."""

    async def release(self, reason: CloseReason, first_unsettled_sample: int) -> None:
        """The session closed: acknowledge what it held; after a drain (`shutdown`) only the
        audio before `first_unsettled_sample`, where `Delivery.replays`."""

    async def keep_alive(self, now: float, older_than_s: float) -> None:
        """Tell the server that messages held `older_than_s` are still being worked on."""


class Delivery(Protocol):
    """Where the worker's messages come from, and what is acknowledged when."""

    # Whether a drained session's unacknowledged audio comes again to its next owner: the
    # drain then leaves the open utterance to it, whole, instead of cutting it.
    replays: bool

    async def subscribe(
        self, nc: Client, subjects: list[str], on_message: MessageHandler
    ) -> list[Subscription]:
        """Start handing the messages of `subjects` to `on_message` (drained at shutdown)."""

    async def admit(self, msg: Msg) -> bool:
        """Whether to handle `msg`: false for a redelivery of what was already taken."""

    def guard(self, nc: Client, shedder: Shedder) -> None:
        """Protect the connection from floods: core NATS sheds refused sessions' messages in
        the client's reader; JetStream needs nothing (it pushes `max_ack_pending` at most)."""

    def paced_at(self, msg: Msg, now: float) -> float:
        """The time a session's pace is measured at for `msg`: when it arrived, or in durable
        mode when it was first published, so a restarted worker's replay of stored audio at
        full speed is measured at the pace the publisher sent it."""

    def session_acks(self) -> SessionAcks:
        """The acknowledgements of a session that opens now."""

    async def reject(self, msg: Msg) -> None:
        """`msg` was refused: replaying it would fail again."""

    async def sweep(self, sessions: Iterable[SessionAcks], now: float) -> None:
        """Called every tick: keep long-held messages from being redelivered."""

    async def stop_taking(self, subs: list[Subscription]) -> None:
        """SIGTERM: handle what was received, take nothing more."""

    async def hand_over(self) -> None:
        """After the drain, every session closed: let other workers take over."""

    def health(self) -> str | None:
        """For /readyz: None when delivery works, else why it does not."""


# End the live sessions whose acknowledgements the predicate picks, as a drain does, and
# return once they are closed (the worker's).
Retire = Callable[[Callable[[SessionAcks], bool]], Awaitable[None]]


async def drain_subscriptions(subs: Iterable[Subscription]) -> None:
    for sub in subs:
        try:
            await sub.drain()  # handles the messages already received, then unsubscribes
        except nats.errors.Error as exc:  # e.g. the connection is already closed
            logger.warning("could not drain the subscription: %r", exc)


def delivery_for(settings: Settings, metrics: Metrics, retire: Retire) -> Delivery:
    """`retire`: the worker's way to end the sessions of a partition elastic mode gives up."""
    if settings.elastic:
        from stt_worker.runtime.elastic import ElasticDelivery  # it builds on this module

        return ElasticDelivery(settings, metrics, retire)
    if settings.durable:
        return DurableDelivery(settings, metrics)
    return CoreDelivery(settings)


# ---------------------------------------------------------------- core NATS: at most once


class _NoAcks:
    """Core NATS: nothing to acknowledge, transcripts go out as they are."""

    consumer = None

    async def hold(
        self, message: ClientMessage, msg: Msg, *, sample_rate_hz: int, channels: int, now: float
    ) -> None:
        pass

    async def skip(self, message: ClientMessage, msg: Msg) -> bool:
        return False

    def stamp(self, message: ServerMessage, start_sample: int | None = None) -> ServerMessage:
        return message

    async def settle(self, session: Session) -> None:
        pass

    async def release(self, reason: CloseReason, first_unsettled_sample: int) -> None:
        pass

    async def keep_alive(self, now: float, older_than_s: float) -> None:
        pass


_NO_ACKS = _NoAcks()


class CoreDelivery:
    """Plain subscriptions: a message is handled once, and lost if the worker dies first."""

    replays = False

    def __init__(self, settings: Settings) -> None:
        self._pending_msgs_limit = settings.pending_msgs_limit

    async def subscribe(
        self, nc: Client, subjects: list[str], on_message: MessageHandler
    ) -> list[Subscription]:
        limit = self._pending_msgs_limit
        return [
            await nc.subscribe(
                subject,
                cb=on_message,
                pending_msgs_limit=limit,
                pending_bytes_limit=limit * _BYTES_PER_PENDING_MSG,
            )
            for subject in subjects
        ]

    async def admit(self, msg: Msg) -> bool:
        return True

    def guard(self, nc: Client, shedder: Shedder) -> None:
        shedder.install(nc)

    def paced_at(self, msg: Msg, now: float) -> float:
        return now

    def session_acks(self) -> SessionAcks:
        return _NO_ACKS

    async def reject(self, msg: Msg) -> None:
        pass

    async def sweep(self, sessions: Iterable[SessionAcks], now: float) -> None:
        pass

    async def stop_taking(self, subs: list[Subscription]) -> None:
        await drain_subscriptions(subs)

    async def hand_over(self) -> None:
        pass

    def health(self) -> str | None:
        return None


# ---------------------------------------------------------------- durable mode: JetStream


class _Delivered:
    """A JetStream message as the ledger holds it: an acknowledgement that fails is logged
    and counted, never raised (the server redelivers the message after ``ack_wait``)."""

    __slots__ = ("_failures", "_msg", "stream_seq")

    def __init__(self, msg: Msg, failures: Counter) -> None:
        self._msg = msg
        self._failures = failures
        self.stream_seq: int = msg.metadata.sequence.stream

    async def ack(self) -> None:
        await self._settle("ack", self._msg.ack)

    async def in_progress(self) -> None:
        await self._settle("in_progress", self._msg.in_progress)

    async def _settle(self, operation: AckOperation, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except nats.errors.Error as exc:  # e.g. the connection closed under us
            self._failures.labels(operation).inc()
            logger.warning(
                "JetStream %s of stream sequence %d failed: %r",
                operation,
                self.stream_seq,
                exc,
                extra={"operation": operation, "stream_seq": self.stream_seq},
            )


class DurableDelivery:
    """A JetStream work-queue stream keeps each audio message until we acknowledge it; our
    durable consumer delivers this worker's share of it."""

    replays = True

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._failures = metrics.ack_failures
        # The highest stream sequence taken from each consumer (a consumer created later
        # replays older sequences), and the sequences held unacknowledged.
        self._last_stream_seq: dict[str, int] = {}
        self._held_seqs: set[int] = set()
        self._sweep_at = 0.0

    async def subscribe(
        self, nc: Client, subjects: list[str], on_message: MessageHandler
    ) -> list[Subscription]:
        await ensure_work_queue(nc.jetstream(), self._settings)
        consumer = self._settings.consumer_name()
        return [await self.consume(nc, consumer, subjects, on_message)]

    async def consume(
        self, nc: Client, consumer: str, subjects: list[str], on_message: MessageHandler
    ) -> Subscription:
        """(Re-)create the durable `consumer` over `subjects` and subscribe to it."""
        settings = self._settings
        js = nc.jetstream()
        name = settings.jetstream_stream
        # Re-created at every start: what the previous process held unacknowledged then comes
        # again at once and in order, rather than after ack_wait and behind newer audio. A
        # work queue keeps only unacknowledged messages, so "deliver all" resumes exactly at
        # the first unacknowledged chunk.
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(name, consumer)
        config = ConsumerConfig(
            durable_name=consumer,
            deliver_subject=nc.new_inbox(),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending,
            filter_subjects=subjects,
        )
        await js.add_consumer(name, config)
        self._last_stream_seq.pop(consumer, None)
        logger.info("durable mode", extra={"stream": name, "consumer": consumer})
        # The server never has more than max_ack_pending out, so a buffer that large never
        # drops a message (SlowConsumerError): back-pressure stays on the server, which keeps it.
        limit = max(settings.pending_msgs_limit, settings.max_ack_pending)
        return await js.subscribe_bind(
            name,
            config,
            consumer,
            cb=on_message,
            manual_ack=True,
            pending_msgs_limit=limit,
            pending_bytes_limit=limit * _BYTES_PER_PENDING_MSG,
        )

    async def admit(self, msg: Msg) -> bool:
        metadata = msg.metadata
        seq, consumer = metadata.sequence.stream, metadata.consumer or ""
        if seq > self._last_stream_seq.get(consumer, 0):
            self._last_stream_seq[consumer] = seq
            return True
        # Still held: it is in progress. Not held: its audio was used, or dropped and
        # reported (`audio_dropped`); either way it is done.
        delivered = _Delivered(msg, self._failures)
        await (delivered.in_progress() if seq in self._held_seqs else delivered.ack())
        return False

    def guard(self, nc: Client, shedder: Shedder) -> None:
        pass  # the server holds a flood in the stream, not in our connection

    def paced_at(self, msg: Msg, now: float) -> float:
        # The stream's store time, from the delivery's reply subject (no extra round trip).
        return msg.metadata.timestamp.timestamp()

    def session_acks(self) -> SessionAcks:
        return LedgerAcks(self)

    async def reject(self, msg: Msg) -> None:
        await self.acknowledge(msg)

    async def acknowledge(self, msg: Msg) -> None:
        """Done with `msg` without holding it."""
        await _Delivered(msg, self._failures).ack()

    async def sweep(self, sessions: Iterable[SessionAcks], now: float) -> None:
        """Every quarter of ``ack_wait``: messages held for half of it (a session's `start`,
        audio behind a slow backend) are reported in progress, so none is redelivered."""
        if now < self._sweep_at:
            return
        ack_wait_s = self._settings.ack_wait_s
        self._sweep_at = now + ack_wait_s / 4
        for acks in sessions:
            await acks.keep_alive(now, ack_wait_s / 2)

    async def stop_taking(self, subs: list[Subscription]) -> None:
        await drain_subscriptions(subs)

    async def hand_over(self) -> None:
        pass  # the consumer stays: the next process re-creates it

    def health(self) -> str | None:
        return None

    def held(self, msg: Msg) -> _Delivered:
        delivered = _Delivered(msg, self._failures)
        self._held_seqs.add(delivered.stream_seq)
        return delivered

    async def ack(self, held: Iterable[Held]) -> None:
        for each in held:
            self._held_seqs.discard(each.stream_seq)
            await each.message.ack()


class LedgerAcks:
    """A session's JetStream messages, held in its `AckLedger` until settled."""

    def __init__(self, delivery: DurableDelivery) -> None:
        self._delivery = delivery
        self._ledger = AckLedger()
        self.consumer: str | None = None

    async def hold(
        self, message: ClientMessage, msg: Msg, *, sample_rate_hz: int, channels: int, now: float
    ) -> None:
        self.consumer = msg.metadata.consumer
        delivered = self._delivery.held(msg)
        superseded = self._ledger.hold(
            message,
            delivered,
            delivered.stream_seq,
            sample_rate_hz=sample_rate_hz,
            channels=channels,
            now=now,
        )
        await self._delivery.ack(superseded)

    async def skip(self, message: ClientMessage, msg: Msg) -> bool:
        return False

    def stamp(self, message: ServerMessage, start_sample: int | None = None) -> ServerMessage:
        if not isinstance(message, Transcription):
            return message
        start = round(message.audio_start_s * SAMPLE_RATE_HZ)
        seqs = self._ledger.source_seqs(start, round(message.audio_end_s * SAMPLE_RATE_HZ))
        if seqs is None:
            return message
        return msgspec.structs.replace(message, source_seq_first=seqs[0], source_seq_last=seqs[1])

    async def settle(self, session: Session) -> None:
        # Every result this audio fed is out (published before this call, on the same
        # connection, so the server sees it before these acknowledgements).
        await self._delivery.ack(self._ledger.settled(session.first_unsettled_sample))

    async def release(self, reason: CloseReason, first_unsettled_sample: int) -> None:
        # After a drain, the session's rest is the next worker's: the start and turn to reopen
        # it with, and the audio of the utterance left open, to transcribe whole.
        if reason == "shutdown":
            await self._delivery.ack(self._ledger.hand_over(first_unsettled_sample))
        else:
            await self._delivery.ack(self._ledger.release_all())

    async def keep_alive(self, now: float, older_than_s: float) -> None:
        for message in self._ledger.stale(now, older_than_s):
            await message.in_progress()


async def ensure_work_queue(js: JetStreamContext, settings: Settings) -> None:
    """The audio stream, created when missing; it must be a work queue."""
    name = settings.jetstream_stream
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        config = StreamConfig(
            name=name,
            subjects=settings.jetstream_subjects(),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=settings.jetstream_max_age_s,
        )
        if per_subject := settings.stream_max_msgs_per_subject:
            # The server refuses a session's messages past the limit (a JetStream publish
            # gets an error, a core one is dropped): a flood stays the publisher's loss
            # instead of queueing ahead of other sessions' audio.
            config.max_msgs_per_subject = per_subject
            config.discard = DiscardPolicy.NEW
            config.discard_new_per_subject = True
        info = await js.add_stream(config)
    if info.config.retention != RetentionPolicy.WORK_QUEUE:
        # Re-creating the consumer below would replay audio already transcribed.
        raise SttError(f"JetStream stream {name!r} must have work-queue retention")
