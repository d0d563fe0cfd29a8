"""Elastic mode (STT_ELASTIC) on a real nats-server with JetStream: workers share the
partitions through KV leases whatever their number, a drained worker hands its partitions
and its open session over, and a restarted one gets its share back, each within 10 s."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from stt_worker.config import load_settings
from stt_worker.core.continuity import SessionRecord
from stt_worker.runtime.delivery import ensure_work_queue
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.session_store import SessionStore
from stt_worker.runtime.worker import Worker
from tests.helpers import Inbox, until
from tests.test_process import HEAD_WORD, finals, stream_head, stream_tail, worker_env
from tests.worker_process import WorkerProcess

PARTITIONS = 8
REBALANCE_S = 10  # what the issue asks of a join or a leave


@pytest.fixture
async def js_url(tmp_path) -> AsyncIterator[str]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        yield server.url


def elastic(js_url: str, worker_id: str) -> dict[str, object]:
    # The publishers pause mid-utterance while workers come and go: a pause that long must
    # not end the utterance, so that only a hand-over does.
    return dict(
        nats_url=js_url, http_port=0, otel_enabled=False, durable=True, elastic=True,
        partitions=PARTITIONS, lease_s=3.0, drain_timeout_s=10, worker_id=worker_id,
        chunk_timeout_s=60,
    )  # fmt: skip


async def owners(js: JetStreamContext) -> dict[int, str]:
    """Each leased partition's owner, as the bucket holds it."""
    kv = await js.key_value(load_settings().ownership_bucket)
    leased: dict[int, str] = {}
    for partition in range(PARTITIONS):
        try:
            entry = await kv.get(f"lease.{partition}")
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            leased[partition] = entry.value.decode()
    return leased


def owned(worker: Worker) -> float | None:
    """The worker's `stt_partitions_owned` gauge."""
    return worker.telemetry.metrics.registry.get_sample_value("stt_partitions_owned")


def split_is(expected: dict[str, int], js: JetStreamContext):
    async def holds() -> bool:
        return collections.Counter((await owners(js)).values()) == expected

    return holds


async def test_a_join_a_drain_and_a_restart_each_rebalance_within_10_s(js_url, make_worker):
    nc = await nats.connect(js_url)
    js = nc.jetstream()
    try:
        await make_worker(**elastic(js_url, "a"))
        await until(split_is({"a": 8}, js), REBALANCE_S)
        _, stop_b, task_b = await make_worker(return_handles=True, **elastic(js_url, "b"))
        await until(split_is({"a": 4, "b": 4}, js), REBALANCE_S)
        stream = load_settings().jetstream_stream
        consumers = {c.name for c in await js.consumers_info(stream)}
        assert consumers == {f"stt-streaming-p{p}" for p in range(PARTITIONS)}

        # A session mid-utterance on one of b's partitions, then b drains (SIGTERM).
        partition = min(p for p, owner in (await owners(js)).items() if owner == "b")
        session = f"elastic-{uuid.uuid4().hex[:8]}"
        inbox = await Inbox.open(nc, session)
        prefix = f"ai.voice.partitioned.{partition}"
        stats = await stream_head(nc, session, speaker_id="alice", subject_prefix=prefix)
        partial = await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
        stop_b.set()
        await asyncio.wait_for(task_b, 30)
        await until(split_is({"a": 8}, js), REBALANCE_S)

        # The publisher goes on: a reopens the session with the `start` b kept for it and
        # transcribes the utterance b left open whole, under its id; the session goes on,
        # never closed in between, its numbering continued.
        await stream_tail(nc, session, stats, subject_prefix=prefix)
        moved = await inbox.until_closed(within_s=60)
        assert not any(m.get("type") == "session_closed" for m in inbox.received[:-1])
        (final,) = finals(inbox.received)
        text = final["transcript"].lower()
        assert HEAD_WORD in text and "sauce" in text, final
        assert final["speaker_id"] == "alice"
        assert final["utterance_id"] == partial["utterance_id"]
        sequences = [m["sequence"] for m in inbox.received if "sequence" in m]
        assert sequences == sorted(set(sequences))  # b's partials' numbers are not reused
        assert moved[-1]["utterances"] == final["utterance_id"]

        await make_worker(**elastic(js_url, "b"))  # b comes back
        await until(split_is({"a": 4, "b": 4}, js), REBALANCE_S)
        # Each round's look at the bucket is an ephemeral consumer that must not pile up.
        bucket = await js.stream_info(f"KV_{load_settings().ownership_bucket}")
        assert bucket.state.consumer_count <= 2 * 2, bucket.state
    finally:
        await nc.close()


async def test_a_killed_workers_partitions_and_open_utterance_are_taken_over(js_url):
    """SIGKILL: nothing is handed over; the leases expire and the survivor's new consumer
    replays the audio the dead worker never acknowledged."""
    nc = await nats.connect(js_url)
    js = nc.jetstream()

    def env(worker_id: str) -> dict[str, str]:
        return worker_env(
            js_url, STT_DURABLE="true", STT_ELASTIC="true", STT_PARTITIONS=str(PARTITIONS),
            STT_LEASE_S="3", STT_WORKER_ID=worker_id, STT_CHUNK_TIMEOUT="60",
        )  # fmt: skip

    try:
        async with WorkerProcess(env("a")), WorkerProcess(env("b")) as b:
            await until(split_is({"a": 4, "b": 4}, js), REBALANCE_S)
            partition = min(p for p, owner in (await owners(js)).items() if owner == "b")
            session = f"killed-{uuid.uuid4().hex[:8]}"
            inbox = await Inbox.open(nc, session)
            prefix = f"ai.voice.partitioned.{partition}"
            stats = await stream_head(nc, session, subject_prefix=prefix)
            await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
            await b.kill()
            await until(split_is({"a": 8}, js), REBALANCE_S)
            await stream_tail(nc, session, stats, subject_prefix=prefix)
            messages = await inbox.until_closed(within_s=60)
    finally:
        await nc.close()
    (final,) = finals(messages)
    text = final["transcript"].lower()
    assert HEAD_WORD in text and "sauce" in text, text  # the dead worker's audio, replayed


async def test_a_join_moves_only_the_given_up_partitions_sessions(js_url, make_worker):
    """A lone worker gives partitions 4-7 up when a second joins: its open session on
    partition 7 goes on at the newcomer, which transcribes the utterance left open whole,
    under its id, numbering continued; its session on partition 0, which it keeps, is not
    touched."""
    nc = await nats.connect(js_url)
    js = nc.jetstream()
    try:
        a = await make_worker(**elastic(js_url, "a"))
        await until(split_is({"a": 8}, js), REBALANCE_S)
        await until(lambda: owned(a) == PARTITIONS, REBALANCE_S)
        kept, moved = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("kept", "moved"))
        inboxes = {session: await Inbox.open(nc, session) for session in (kept, moved)}
        prefixes = {kept: "ai.voice.partitioned.0", moved: "ai.voice.partitioned.7"}
        stats = {s: await stream_head(nc, s, subject_prefix=prefixes[s]) for s in (kept, moved)}
        partial = {}
        for session, inbox in inboxes.items():
            partial[session] = await inbox.until(lambda m: m.get("is_partial") is True, 60)

        b = await make_worker(**elastic(js_url, "b"))
        await until(split_is({"a": 4, "b": 4}, js), REBALANCE_S)
        assert (await owners(js))[7] == "b"
        await until(lambda: owned(a) == owned(b) == 4, REBALANCE_S)  # a's hand-over done

        for session in (kept, moved):
            await stream_tail(nc, session, stats[session], subject_prefix=prefixes[session])
        results = {s: await inboxes[s].until_closed(within_s=60) for s in (kept, moved)}
    finally:
        await nc.close()
    (whole,) = finals(inboxes[kept].received)
    assert whole["end_reason"] == "end" and whole["utterance_id"] == 1
    assert HEAD_WORD in whole["transcript"].lower() and "sauce" in whole["transcript"].lower()
    (moved_final,) = finals(results[moved])
    assert moved_final["utterance_id"] == partial[moved]["utterance_id"]
    text = moved_final["transcript"].lower()
    assert HEAD_WORD in text and "sauce" in text, moved_final  # whole, not cut at the move
    sequences = [m["sequence"] for m in inboxes[moved].received if "sequence" in m]
    assert len(sequences) == len(set(sequences))  # the newcomer reuses no sequence
    closes = [m for m in inboxes[moved].received if m.get("type") == "session_closed"]
    assert len(closes) == 1  # moved, not closed and reopened


async def test_audio_a_published_final_covered_is_not_heard_again_by_the_next_owner(
    js_url, make_worker
):
    """A hand-over where the previous owner's acknowledgements of a finalised utterance's
    audio never reached the stream (they raced the consumer's deletion, or it died between
    the final and the acks): the next owner gets that audio again, followed by new audio.
    It must skip what the final covered and transcribe the rest, not treat the whole
    utterance as a replay and drop the new audio with it."""
    nc = await nats.connect(js_url)
    js = nc.jetstream()
    settings = load_settings(**elastic(js_url, "a"))
    session = f"covered-{uuid.uuid4().hex[:8]}"
    prefix = "ai.voice.partitioned.3"
    try:
        await ensure_work_queue(js, settings)
        stats = await stream_head(nc, session, speaker_id="alice", subject_prefix=prefix)
        # What the previous owner's final covered: the head, up to its last chunk, once the
        # stream holds it all (it stores what core NATS delivers asynchronously: read at once,
        # the last sequence could fall short and the head's end be heard again).
        subject = f"{prefix}.{session}"
        for _ in range(200):
            info = await js.stream_info(settings.jetstream_stream, subjects_filter=subject)
            if (info.state.subjects or {}).get(subject, 0) >= stats.chunks + 1:  # + start
                break
            await asyncio.sleep(0.05)
        covered_to = info.state.last_seq
        store = await SessionStore.open(js, settings)
        await store.save(session, SessionRecord(2, 7, covered_to))
        await stream_tail(nc, session, stats, subject_prefix=prefix)
        inbox = await Inbox.open(nc, session)
        await make_worker(**elastic(js_url, "a"))
        messages = await inbox.until_closed(within_s=60)
    finally:
        await nc.close()
    (final,) = finals(messages)
    text = final["transcript"].lower()
    assert "sauce" in text and HEAD_WORD not in text, text
    assert final["utterance_id"] == 2 and final["speaker_id"] == "alice"
    assert messages[0]["sequence"] == 7
