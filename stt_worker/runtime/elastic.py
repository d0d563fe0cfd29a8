"""Elastic durable mode (STT_ELASTIC): one durable consumer per partition, served by whichever
worker holds the partition's lease (`ownership.Ownership`), so workers may come and go.

Everything about a message once it arrives is durable mode's (`delivery.DurableDelivery`);
this adds which consumers run here. Taking a partition re-creates its consumer, so the audio
its previous owner left unacknowledged (a killed worker's, or the `start` a drained one kept)
comes at once and in order. Giving one up stops its subscription, ends its sessions as a
drain does (finals out, audio acknowledged, the `start` kept for the next owner) and only
then deletes the consumer and lets the lease go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stt_worker.config import Settings
from stt_worker.core.continuity import Continuation
from stt_worker.core.ledger import Held
from stt_worker.core.protocol import Chunk, ClientMessage, CloseReason, ServerMessage
from stt_worker.core.session import Session
from stt_worker.runtime.delivery import (
    DurableDelivery,
    LedgerAcks,
    MessageHandler,
    Retire,
    SessionAcks,
    drain_subscriptions,
    ensure_work_queue,
)
from stt_worker.runtime.ownership import Ownership
from stt_worker.runtime.session_store import SessionStore
from stt_worker.runtime.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)


class ElasticDelivery(DurableDelivery):
    """Durable mode over the partitions this worker holds the leases of."""

    def __init__(self, settings: Settings, metrics: Metrics, retire: Retire) -> None:
        super().__init__(settings, metrics)
        self._retire = retire
        self._subs: dict[int, Subscription] = {}
        self._nc: Client | None = None
        self._on_message: MessageHandler | None = None
        self.ownership: Ownership | None = None
        self._store: SessionStore | None = None
        self._sessions: weakref.WeakSet[_ContinuedAcks] = weakref.WeakSet()
        metrics.watch(
            "stt_partitions_owned",
            "Partitions this worker holds the lease of (elastic mode)",
            self._partitions_owned,
        )

    def _partitions_owned(self) -> float:
        return float(len(self.ownership.owned)) if self.ownership is not None else 0.0

    async def subscribe(
        self, nc: Client, subjects: list[str], on_message: MessageHandler
    ) -> list[Subscription]:
        """Join the members and take a first share; partitions come and go from here on,
        so there are no subscriptions for the worker to keep."""
        self._nc, self._on_message = nc, on_message
        js = nc.jetstream()
        await ensure_work_queue(js, self._settings)
        self._store = await SessionStore.open(js, self._settings)
        self.ownership = Ownership(
            self._settings,
            js,
            take=self._take,
            give_up=self._give_up,
            forget=self._forget,
            intact=self._intact,
        )
        await self.ownership.start()
        logger.info("elastic mode", extra={"worker_id": self.ownership.me})
        return []

    async def stop_taking(self, subs: list[Subscription]) -> None:
        if self.ownership is not None:
            await self.ownership.drain()
        subs, self._subs = list(self._subs.values()), {}
        await drain_subscriptions(subs)

    async def hand_over(self) -> None:
        if self.ownership is not None:
            await self.ownership.hand_over()

    def health(self) -> str | None:
        return None if self.ownership is None else self.ownership.health()

    def session_acks(self) -> SessionAcks:
        assert self._store is not None, "not subscribed"
        acks = _ContinuedAcks(self, self._store)
        self._sessions.add(acks)
        return acks

    def _consumer(self, partition: int) -> str:
        return f"{self._settings.durable_consumer}-p{partition}"

    async def _take(self, partition: int) -> None:
        assert self._nc is not None and self._on_message is not None
        subject = self._settings.partition_subject.format(partition=partition)
        self._subs[partition] = await self.consume(
            self._nc, self._consumer(partition), [subject], self._on_message
        )

    async def _give_up(self, partition: int) -> None:
        sub = self._subs.pop(partition, None)
        if sub is not None:
            await drain_subscriptions([sub])
        consumer = self._consumer(partition)
        await self._retire(lambda acks: acks.consumer == consumer)
        await self._released(consumer)

    async def _released(self, consumer: str) -> None:
        """Until the partition's closed sessions have written their records and acknowledged
        their audio: the worker's drain sees a session closed before that, and the next owner
        must not read a record still being written."""
        releases = [acks.released for acks in self._sessions if acks.consumer == consumer]
        waits = [released.wait() for released in releases if released is not None]
        try:
            async with asyncio.timeout(self._settings.drain_timeout_s):
                await asyncio.gather(*waits)
        except TimeoutError:
            logger.error("sessions' records still being written at a hand-over")

    async def _intact(self, partition: int) -> bool:
        """Our subscription is still the one its consumer delivers to (a worker that held
        the partition meanwhile re-created the consumer, or deleted it)."""
        sub = self._subs.get(partition)
        if sub is None:
            return False
        try:
            info = await sub.consumer_info()
        except nats.errors.Error:
            return False
        return info.config.deliver_subject == sub.subject

    async def _forget(self, partition: int) -> None:
        """Delete the consumer (we still hold the lease): what it leaves unacknowledged, the
        next owner's consumer delivers."""
        assert self._nc is not None
        js = self._nc.jetstream()
        with contextlib.suppress(nats.errors.Error):  # already gone, or the connection
            await js.delete_consumer(self._settings.jetstream_stream, self._consumer(partition))


class _ContinuedAcks(LedgerAcks):
    """Durable mode's acknowledgements, and the session's numbering carried over from its
    previous owner (`core/continuity.py`): loaded before its first message is handled, saved
    after each final, before the final's audio is acknowledged (a crash in between replays
    the audio, and the record still says what was published).

    The record is written beside the session, not in the `_apply` that published the final
    (a KV write may take up to the JetStream timeout, and a decode slot would wait for it):
    one write at a time, of the latest record, and the audio settled meanwhile acknowledged
    after the write that covers it."""

    def __init__(self, delivery: DurableDelivery, store: SessionStore) -> None:
        super().__init__(delivery)
        self._store = store
        self._session_id: str | None = None
        self._continuation = Continuation()
        self._saved = self._continuation.record
        # Made when `release` begins, set once it has written the record and acknowledged the
        # audio (None: open).
        self.released: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._unwritten: list[Held] = []  # settled audio waiting for the record's write

    async def hold(
        self, message: ClientMessage, msg: Msg, *, sample_rate_hz: int, channels: int, now: float
    ) -> None:
        await self._resume(msg)
        await super().hold(message, msg, sample_rate_hz=sample_rate_hz, channels=channels, now=now)

    async def skip(self, message: ClientMessage, msg: Msg) -> bool:
        await self._resume(msg)
        if not isinstance(message, Chunk):  # a kept `start` or turn reopens the session
            return False
        if not self._continuation.covers(msg.metadata.sequence.stream):
            return False
        await self._delivery.acknowledge(msg)
        return True

    async def _resume(self, msg: Msg) -> None:
        """Load the session's record at its first message: what its previous owner published."""
        if self._session_id is None:
            self._session_id = msg.subject.rsplit(".", 1)[-1]
            self._continuation = Continuation(await self._store.load(self._session_id))
            self._saved = self._continuation.record

    def stamp(
        self, message: ServerMessage, start_sample: int | None = None
    ) -> ServerMessage | None:
        first_seq = None
        if start_sample is not None:  # an interrupt or error: where its utterance began
            seqs = self._ledger.source_seqs(start_sample, start_sample + 1)
            first_seq = None if seqs is None else seqs[0]
        return self._continuation.outgoing(super().stamp(message), first_seq)

    async def settle(self, session: Session) -> None:
        settled = self._ledger.settled(session.first_unsettled_sample)
        if self.released is not None:  # closing: its release writes and acknowledges last
            self._unwritten += settled
            return
        if self._continuation.record is self._saved and self._writer is None:
            await self._delivery.ack(settled)  # no record to write before them
            return
        self._unwritten += settled
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="session-record")

    async def _write(self) -> None:
        """Write the latest record, then acknowledge the audio that waited for it; again while
        finals came meanwhile (records in between are never written: the latest covers them)."""
        assert self._session_id is not None, "a final before the session's first message"
        try:
            while self._unwritten or self._continuation.record is not self._saved:
                record, settled, self._unwritten = self._continuation.record, self._unwritten, []
                if record is not self._saved:
                    await self._store.save(self._session_id, record)
                    self._saved = record
                await self._delivery.ack(settled)
        finally:
            self._writer = None

    async def release(self, reason: CloseReason, first_unsettled_sample: int) -> None:
        self.released = asyncio.Event()
        try:
            await self._release(reason, first_unsettled_sample)
        finally:
            self.released.set()

    async def _release(self, reason: CloseReason, first_unsettled_sample: int) -> None:
        if self._writer is not None:  # none starts from here on: `settle` leaves it to us
            await self._writer
        if self._session_id is not None:
            moving = reason == "shutdown"
            record = self._continuation.moving() if moving else self._continuation.record
            if not moving:
                await self._store.forget(self._session_id)  # over, not moving
            elif record is not self._saved:  # moving: the record first, then the audio's acks
                await self._store.save(self._session_id, record)
            self._saved = record
        settled, self._unwritten = self._unwritten, []
        await self._delivery.ack(settled)
        await super().release(reason, first_unsettled_sample)
