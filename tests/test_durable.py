"""Durable mode (STT_DURABLE=true) on a real nats-server with JetStream: a worker process
killed with SIGKILL mid-utterance loses nothing; its successor replays what was not yet
acknowledged, and the publisher, unchanged, never knew."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import nats
import numpy as np
import pytest

from stt_worker.config import load_settings
from stt_worker.runtime.delivery import ensure_work_queue
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import StreamStats, publish_pcm, stream_file
from stt_worker.runtime.worker import Worker
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.test_process import (
    CLIP,
    DRAIN_TIMEOUT_S,
    HEAD_WORD,
    finals,
    stream_head,
    stream_tail,
    worker_env,
)
from tests.textnorm import wer
from tests.worker_process import WorkerProcess


@pytest.fixture
async def js_url(tmp_path) -> AsyncIterator[str]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        yield server.url


async def test_sigkill_mid_utterance_then_restart_the_final_still_arrives(js_url):
    nc = await nats.connect(js_url)
    env = worker_env(js_url, STT_DURABLE="true")
    session = f"durable-{uuid.uuid4().hex[:8]}"
    try:
        inbox = await Inbox.open(nc, session)
        async with WorkerProcess(env) as worker:
            stats = await stream_head(nc, session)
            partial = await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
            await worker.kill()
        # The publisher goes on while no worker runs: the stream keeps its audio.
        await stream_tail(nc, session, stats)
        async with WorkerProcess(env):
            messages = await inbox.until_closed(within_s=60)
            js = nc.jetstream()
            # Everything acknowledged once the session closed: the work queue is empty.
            stream = load_settings().jetstream_stream
            await until(lambda: _stored_at_most(js, stream, 0), 10)
    finally:
        await nc.close()
    (final,) = finals(messages)
    text = final["transcript"]
    assert HEAD_WORD in text.lower(), text  # the killed worker's audio, replayed
    assert wer(manifest_text(CLIP), text) <= 0.2, text
    # The replay resumed at the first unacknowledged chunk: the utterance's own first chunk.
    assert final["source_seq_first"] == partial["source_seq_first"]
    assert final["source_seq_last"] > partial["source_seq_last"]
    # A new incarnation of the session: ids restart (source_seq_* tell replays apart).
    assert final["utterance_id"] == 1


async def test_a_stored_backlog_larger_than_the_sessions_inbox_is_slowed_down_not_lost(js_url):
    """A worker that takes over stored audio (a partition moved, a restart) gets it all at
    once, far faster than the session's task handles it: a full inbox waits for room, as the
    stream holds the rest, instead of refusing (and acknowledging) audio nobody else has."""
    nc = await nats.connect(js_url)
    env = worker_env(js_url, STT_DURABLE="true", STT_SESSION_INBOX_MESSAGES="16")
    session = f"backlog-{uuid.uuid4().hex[:8]}"
    try:
        await ensure_work_queue(nc.jetstream(), load_settings(durable=True))
        inbox = await Inbox.open(nc, session)
        stats = await stream_head(nc, session)  # the whole clip, stored before any worker
        await stream_tail(nc, session, stats)
        async with WorkerProcess(env):
            messages = await inbox.until_closed(within_s=60)
    finally:
        await nc.close()
    assert not [m for m in messages if m.get("type") == "error"], messages
    text = " ".join(final["transcript"] for final in finals(messages))
    assert wer(manifest_text(CLIP), text) <= 0.2, text


async def test_sigterm_in_durable_mode_hands_the_session_on_to_the_next_worker(js_url):
    """A drained worker leaves the session's `start` in the stream, and the audio of the
    utterance it had open, unfinished: the next worker reopens the session with the `start`
    (the speaker id shows it) and transcribes that utterance whole, not as a cut and a rest."""
    nc = await nats.connect(js_url)
    env = worker_env(js_url, STT_DURABLE="true")
    session = f"handover-{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    stream = load_settings().jetstream_stream
    try:
        inbox = await Inbox.open(nc, session)
        async with WorkerProcess(env) as worker:
            stats = await stream_head(nc, session, speaker_id="alice")
            await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
            worker.signal(signal.SIGTERM)
            assert await worker.wait(DRAIN_TIMEOUT_S + 5) == 0, worker.tail
        drained = await inbox.until_closed(within_s=5)
        assert finals(drained) == []  # the open utterance is left to the next worker
        assert not await _stored_at_most(js, stream, 1)  # its audio is kept beside the `start`
        await stream_tail(nc, session, stats)
        async with WorkerProcess(env):
            messages = await inbox.until_closed(within_s=60)
            await until(lambda: _stored_at_most(js, stream, 0), 10)
    finally:
        await nc.close()
    (final,) = finals(messages)
    text = final["transcript"].lower()
    assert HEAD_WORD in text and "sauce" in text, final  # the whole utterance, in one final
    assert final["speaker_id"] == "alice"  # reopened from the kept `start`


async def test_a_partition_share_consumes_its_partitions_and_acknowledges_silence(engine, js_url):
    """Worker 1 of 2 over 4 partitions takes partitions 1 and 3 through its own durable
    consumer; silence is acknowledged as soon as it leaves the pre-roll, so the stream holds
    only what may still become a transcript."""
    settings = load_settings(
        nats_url=js_url, http_port=0, otel_enabled=False, durable=True,
        partitions=4, replicas=2, replica_index=1,
    )  # fmt: skip
    worker = Worker(settings, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    nc = await nats.connect(js_url)
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        js = nc.jetstream()
        stream = settings.jetstream_stream
        consumer = await js.consumer_info(stream, "stt-streaming-1-of-2")
        assert consumer.config.filter_subjects == settings.stream_subjects()

        session = f"share-{uuid.uuid4().hex[:8]}"
        inbox = await Inbox.open(nc, session)
        prefix = "ai.voice.partitioned.3"  # what the server's mapping would publish to
        stats = StreamStats()
        silence = np.zeros(5 * 16_000, dtype=np.int16)
        await publish_pcm(
            nc, session, silence, speed=0, send_end=False, subject_prefix=prefix, stats=stats
        )
        # 250 chunks of silence in; held: the start, the pre-roll window (20 chunks) and the
        # frames Silero has not labelled yet (its 32 ms window: at most 2 chunks).
        await until(lambda: _stored_at_most(js, stream, 23), 10)
        await stream_file(
            nc, session, SPEECH_DIR / "lj_LJ001-0008.wav", speed=0, send_start=False,
            subject_prefix=prefix, stats=stats,
        )  # fmt: skip
        messages = await inbox.until_closed(within_s=30)
        (final,) = finals(messages)
        assert "surpassed" in final["transcript"].lower()
        assert final["source_seq_first"] > 200  # its first chunk is the speech's, not silence's
        await until(lambda: _stored_at_most(js, stream, 0), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await nc.close()


async def _stored_at_most(js, stream: str, count: int) -> bool:
    return (await js.stream_info(stream)).state.messages <= count
