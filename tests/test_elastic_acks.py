"""Elastic mode's per-session acknowledgements (runtime/elastic `_ContinuedAcks`) on a real
nats-server with JetStream: the session's record in KV and its audio's acknowledgements, in
the order a move needs them."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from stt_worker.config import Settings, load_settings
from stt_worker.core.continuity import SessionRecord
from stt_worker.core.ledger import Held
from stt_worker.core.protocol import (
    Chunk,
    ClientMessage,
    Interrupt,
    Start,
    Transcription,
    encode_client_message,
)
from stt_worker.runtime.delivery import DurableDelivery, SessionAcks, ensure_work_queue
from stt_worker.runtime.elastic import ElasticDelivery, _ContinuedAcks
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.session_store import SessionStore
from stt_worker.runtime.telemetry.metrics import Metrics
from tests.helpers import until

SESSION = "acks-1"
CONSUMER = "stt-streaming-p0"
CHUNK_SAMPLES = 16_000  # one second of 16 kHz audio per chunk
SETTINGS = load_settings(durable=True, elastic=True, partitions=1)


@pytest.fixture
async def js(tmp_path) -> AsyncIterator[Client]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        nc = await nats.connect(server.url)
        yield nc
        await nc.close()


@dataclass
class Settled:
    """What `settle` reads of a session: where its unsettled audio begins."""

    first_unsettled_sample: int


class Delivered:
    """A session's messages delivered through a real durable consumer on partition 0."""

    def __init__(self, nc: Client, delivery: DurableDelivery) -> None:
        self.nc, self.settings = nc, SETTINGS
        self.delivery = delivery
        self.msgs: list[Msg] = []

    async def start(self, messages: list[ClientMessage]) -> None:
        js = self.nc.jetstream()
        await ensure_work_queue(js, self.settings)
        subject = self.settings.partition_subject.format(partition=0)

        async def on_message(msg: Msg) -> None:
            self.msgs.append(msg)

        await self.delivery.consume(self.nc, CONSUMER, [subject], on_message)
        for message in messages:
            await js.publish(f"ai.voice.partitioned.0.{SESSION}", encode_client_message(message))
        await until(lambda: len(self.msgs) == len(messages), 5)

    async def unacknowledged(self) -> int:
        info = await self.nc.jetstream().consumer_info(self.settings.jetstream_stream, CONSUMER)
        return info.num_ack_pending


def chunk() -> Chunk:
    return Chunk(audio_b64=base64.b64encode(b"\0" * 2 * CHUNK_SAMPLES).decode())


def final(end_s: float, start_s: float = 0.0, utterance_id: int = 1) -> Transcription:
    return Transcription(
        SESSION, "words", utterance_id - 1, False, True, 0.0, None, True, "listening",
        utterance_id=utterance_id, audio_start_s=start_s, audio_end_s=end_s,
    )  # fmt: skip


async def held_session(
    nc: Client, store: SessionStore, delivery: DurableDelivery | None = None
) -> tuple[_ContinuedAcks, Delivered]:
    """A session's `start` and two chunks held, and its first final stamped (as published)."""
    delivered = Delivered(nc, delivery or DurableDelivery(SETTINGS, Metrics()))
    await delivered.start([Start(), chunk(), chunk()])
    acks = _ContinuedAcks(delivered.delivery, store)
    for message, msg in zip([Start(), chunk(), chunk()], delivered.msgs, strict=True):
        await acks.hold(message, msg, sample_rate_hz=16_000, channels=1, now=0.0)
    assert acks.stamp(final(2.0)) is not None
    return acks, delivered


async def test_a_session_that_ends_with_a_final_leaves_no_record(js):
    """[final, session_closed, close] in one `_apply`: `release` forgets the record and the
    `settle` after it must not write it back (a later session with the id would go on)."""
    store = await SessionStore.open(js.jetstream(), load_settings())
    acks, delivered = await held_session(js, store)
    await acks.release("end", 0)
    await acks.settle(Settled(first_unsettled_sample=2 * CHUNK_SAMPLES))
    assert await store.load(SESSION) is None

    async def all_acknowledged() -> bool:
        return await delivered.unacknowledged() == 0

    await until(all_acknowledged, 5)


class Noting(DurableDelivery):
    """The real delivery, noting each acknowledgement in `events` as it goes out."""

    def __init__(self, settings: Settings, events: list[str]) -> None:
        super().__init__(settings, Metrics())
        self.events = events

    async def ack(self, held: Iterable[Held]) -> None:
        held = list(held)
        self.events += [f"ack {each.stream_seq}" for each in held]
        await super().ack(held)


class NotingStore(SessionStore):
    """The real store, noting each record written in `events`."""

    def __init__(self, store: SessionStore, events: list[str]) -> None:
        super().__init__(store._kv)
        self.events = events

    async def save(self, session_id: str, record: SessionRecord) -> None:
        self.events.append("save")
        await super().save(session_id, record)


async def test_a_drained_session_saves_its_record_before_acknowledging_its_audio(js):
    events: list[str] = []
    store = NotingStore(await SessionStore.open(js.jetstream(), load_settings()), events)
    acks, _ = await held_session(js, store, Noting(SETTINGS, events))
    await acks.release("shutdown", 2 * CHUNK_SAMPLES)  # the final covered both chunks
    # The record, then the chunks' acknowledgements; the `start` is kept for the next owner.
    assert events == ["save", "ack 2", "ack 3"]
    record = await store.load(SESSION)
    assert record == SessionRecord(next_utterance_id=2, next_sequence=1, last_final_seq=3)


async def test_a_resumed_sessions_interrupt_is_a_replay_by_where_its_utterance_began(js):
    """The previous owner published a final covering stream messages up to 3, and was killed
    before acknowledging them: they come again, and the interrupts come before any text."""
    store = await SessionStore.open(js.jetstream(), load_settings())
    await store.save(
        SESSION, SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=3)
    )
    delivered = Delivered(js, DurableDelivery(SETTINGS, Metrics()))
    messages = [Start(), chunk(), chunk(), chunk()]  # stream sequences 1 to 4
    await delivered.start(messages)
    acks = _ContinuedAcks(delivered.delivery, store)
    for message, msg in zip(messages, delivered.msgs, strict=True):
        await acks.hold(message, msg, sample_rate_hz=16_000, channels=1, now=0.0)
    replayed = Interrupt(SESSION, 0.0, None, utterance_id=1)  # began in message 2
    assert acks.stamp(replayed, start_sample=0) is None
    new = Interrupt(SESSION, 0.0, None, utterance_id=2)  # began in message 4
    assert acks.stamp(new, start_sample=2 * CHUNK_SAMPLES).utterance_id == 5


class SlowStore(NotingStore):
    """A record takes a while to write (a JetStream server slow to answer)."""

    async def save(self, session_id: str, record: SessionRecord) -> None:
        await asyncio.sleep(0.3)
        await super().save(session_id, record)


async def test_a_partition_is_given_up_only_once_its_sessions_records_are_written(js):
    """The worker's drain sees a session closed as soon as it leaves the table, while its
    release (record, then acknowledgements) goes on: the hand-over must wait for that, or the
    next owner reads a stale record."""
    events: list[str] = []
    closing: list[asyncio.Task[None]] = []

    async def retire(belongs: Callable[[SessionAcks], bool]) -> None:  # as the worker's
        assert belongs(acks)
        closing.append(asyncio.create_task(acks.release("shutdown", 0)))  # its `_apply` goes on
        await asyncio.sleep(0)  # the session left the table: the drain is over

    delivery = ElasticDelivery(SETTINGS, Metrics(), retire)
    delivery._store = SlowStore(await SessionStore.open(js.jetstream(), load_settings()), events)
    delivered = Delivered(js, delivery)
    await delivered.start([Start(), chunk()])
    acks = delivery.session_acks()
    for message, msg in zip([Start(), chunk()], delivered.msgs, strict=True):
        await acks.hold(message, msg, sample_rate_hz=16_000, channels=1, now=0.0)
    assert acks.stamp(final(1.0)) is not None
    await delivery._give_up(0)
    events.append("given up")
    assert events == ["save", "given up"]
    await asyncio.gather(*closing)


async def test_a_finals_record_is_written_beside_the_session_and_its_audio_acked_after(js):
    """Settling never waits for a KV write (it holds a decode slot); the audio a final covers
    is acknowledged only once a record covering it is written, and of records that pile up
    behind a slow write only the latest is written."""
    events: list[str] = []
    store = SlowStore(await SessionStore.open(js.jetstream(), load_settings()), events)
    acks, _ = await held_session(js, store, Noting(SETTINGS, events))  # messages 1 to 3
    clock = asyncio.get_running_loop().time
    started = clock()
    acks.stamp(final(1.0))  # utterance 1 covers message 2
    await acks.settle(Settled(first_unsettled_sample=CHUNK_SAMPLES))
    await asyncio.sleep(0.05)  # its write begins
    acks.stamp(final(2.0, 1.0, utterance_id=2))  # 2 and 3 cover message 3
    await acks.settle(Settled(first_unsettled_sample=CHUNK_SAMPLES))
    acks.stamp(final(2.0, 1.0, utterance_id=3))
    await acks.settle(Settled(first_unsettled_sample=2 * CHUNK_SAMPLES))
    assert clock() - started < 0.2 and events == []  # the first write is still under way
    await until(lambda: len(events) == 4, 5)
    assert events == ["save", "ack 2", "save", "ack 3"]  # utterance 2's record never written
    record = await store.load(SESSION)
    assert record == SessionRecord(next_utterance_id=4, next_sequence=3, last_final_seq=3)


async def test_a_drain_leaves_the_open_utterances_audio_and_numbers_past_its_partials(js):
    """A drain mid-utterance: the chunk a final covered is acknowledged, the open utterance's
    chunk is left in the stream for the next owner, and the record numbers past the partial
    already published for it, so the next owner reuses no `sequence`."""
    events: list[str] = []
    store = NotingStore(await SessionStore.open(js.jetstream(), load_settings()), events)
    delivered = Delivered(js, Noting(SETTINGS, events))
    messages: list[ClientMessage] = [Start(), chunk(), chunk()]
    await delivered.start(messages)
    acks = _ContinuedAcks(delivered.delivery, store)
    for message, msg in zip(messages, delivered.msgs, strict=True):
        await acks.hold(message, msg, sample_rate_hz=16_000, channels=1, now=0.0)
    assert acks.stamp(final(1.0)) is not None  # utterance 1: the first chunk
    partial = msgspec.structs.replace(
        final(2.0, start_s=1.0, utterance_id=2), sequence=1, is_partial=True, is_final=False
    )
    assert acks.stamp(partial) is not None  # utterance 2, open in the second chunk
    await acks.release("shutdown", CHUNK_SAMPLES)
    assert events == ["save", "ack 2"]

    async def left_for_the_next_owner() -> bool:  # the `start` and the open utterance's chunk
        return await delivered.unacknowledged() == 2

    await until(left_for_the_next_owner, 5)
    record = await store.load(SESSION)
    assert record == SessionRecord(next_utterance_id=2, next_sequence=2, last_final_seq=2)
