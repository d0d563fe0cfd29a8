"""``STT_SESSION_CONNECTIONS`` end to end (`runtime/own_connection.py`), on a real nats-server
and the bundled model: a session that keeps to its budgets moves to its own subscription on a
second connection mid-stream and every chunk is heard once (its words, its audio clock); a
session refused for its pace goes back to the wildcard and is still heard to its `end`, while
an honest one beside it keeps its own connection."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import nats
import numpy as np
import pytest

from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import publish_pcm, read_wav, stream_file
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.test_worker import WER_BOUND, assert_sequences, final_text, finals, sid
from tests.textnorm import wer

CLIP = "lj_LJ001-0006.wav"


def clip_seconds(name: str) -> float:
    samples, rate = read_wav(SPEECH_DIR / name)
    return len(samples) / rate


async def test_a_session_moved_to_its_own_connection_hears_every_chunk_once(make_worker, nc):
    worker = await make_worker(session_connections=True)
    own = worker._intake.own
    session = sid()
    inbox = await Inbox.open(nc, session)
    streaming = asyncio.create_task(stream_file(nc, session, SPEECH_DIR / CLIP, speed=4.0))
    await until(lambda: own.sessions == 1, within_s=10)  # moved while it streams
    await streaming
    messages = await inbox.until_closed(within_s=60)
    assert messages[-1]["reason"] == "end"
    assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND
    assert_sequences(messages)
    # A chunk taken twice would push the audio clock past the clip; one lost would not be
    # heard in the words.
    assert max(m["audio_end_s"] for m in finals(messages)) <= clip_seconds(CLIP) + 0.05
    await until(lambda: own.sessions == 0, within_s=5)  # its subscription went with it


@pytest.mark.timeout(120)
async def test_a_session_refused_for_its_pace_goes_back_to_the_wildcard_and_is_heard_out(
    make_worker, nc
):
    worker = await make_worker(session_connections=True, max_control_per_s=20.0)
    own = worker._intake.own
    honest, flooder = sid(), sid()
    inboxes = {s: await Inbox.open(nc, s) for s in (honest, flooder)}
    streams = [
        asyncio.create_task(stream_file(nc, s, SPEECH_DIR / CLIP, speed=4.0, send_end=False))
        for s in (honest, flooder)
    ]
    await until(lambda: own.taken_from_own(honest) and own.taken_from_own(flooder), 10)
    state = msgpack.packb({"type": "state_change", "state": "listening"})
    for _ in range(2000):  # far past 20 a second: refused, and moved back
        await nc.publish(f"ai.voice.stream.{flooder}", state)
    told = await inboxes[flooder].until(lambda m: m.get("code") == "rate_limited", within_s=10)
    assert told["type"] == "error"
    await until(lambda: not own.taken_from_own(flooder), within_s=10)
    assert own.taken_from_own(honest)
    await asyncio.gather(*streams)
    await asyncio.sleep(1.5)  # past the control messages' hold: the `end` is admitted
    for s in (honest, flooder):
        await nc.publish(f"ai.voice.stream.{s}", msgpack.packb({"type": "end"}))
    for s in (honest, flooder):
        closed = (await inboxes[s].until_closed(within_s=30))[-1]
        assert closed["reason"] == "end", s  # its `end` was taken, from whichever connection
        assert_sequences(inboxes[s].received)
        assert final_text(inboxes[s].received), s
    honest_messages = inboxes[honest].received
    assert wer(manifest_text(CLIP), final_text(honest_messages)) <= WER_BOUND
    assert not [m for m in honest_messages if m.get("type") == "error"]


async def test_the_wildcards_late_copies_of_a_closed_session_are_not_taken_again(make_worker, nc):
    # Behind a flood on another subject the wildcard delivers a session's messages late:
    # its own connection's `end` closes the session first, and the wildcard's copies that
    # follow must not be taken again (an `end` for an unknown session, a ghost session).
    worker = await make_worker(session_connections=True)
    own = worker._intake.own
    session, flooder = sid(), sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / CLIP, speed=4.0, send_end=False)
    assert own.taken_from_own(session)
    # Silence after the speech: its final is out before the `end`, which then closes the
    # session at once (a final's decode would give the wildcard time to catch up).
    silence = np.zeros(32_000, dtype=np.int16)
    await publish_pcm(nc, session, silence, speed=4.0, send_start=False, send_end=False)
    await inbox.until(lambda m: m.get("type") == "transcript" and m["is_final"], within_s=30)
    await asyncio.sleep(1.0)
    garbage = b"\xc1" * 100
    for _ in range(200_000):  # ~30 MB queued for the wildcard's connection
        await nc.publish(f"ai.voice.stream.{flooder}", garbage)
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "end"}))
    await inbox.until_closed(within_s=60)
    await nc.flush()
    await asyncio.sleep(3.0)  # the wildcard's copies, the `end` last, arrive meanwhile
    closes = [m for m in inbox.received if m.get("type") == "session_closed"]
    errors = [m for m in inbox.received if m.get("type") == "error"]
    assert len(closes) == 1 and not errors, (closes, errors)
    assert wer(manifest_text(CLIP), final_text(inbox.received)) <= WER_BOUND


async def test_sigterm_closes_a_session_on_its_own_connection_with_its_finals(
    make_worker, nc, caplog
):
    worker, stop, task = await make_worker(session_connections=True, return_handles=True)
    session = sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / CLIP, speed=4.0, send_end=False)
    assert worker._intake.own.taken_from_own(session)
    stop.set()
    await asyncio.wait_for(task, 60)
    closed = (await inbox.until_closed(within_s=10))[-1]
    assert closed["reason"] == "shutdown"
    assert wer(manifest_text(CLIP), final_text(inbox.received)) <= WER_BOUND
    assert not [r for r in caplog.records if r.exc_info], "a clean drain of both connections"


async def test_a_worker_denied_its_markers_says_so_once_and_keeps_sessions_on_the_wildcard(
    make_worker, tmp_path, caplog
):
    # A NATS user that may read the audio but publish only transcripts (the k8s example's
    # worker before markers): every move's marker is refused by the server.
    config = tmp_path / "nats.conf"
    config.write_text(
        """authorization { users = [
          { user: worker, password: w, permissions: {
              subscribe: { allow: ["ai.voice.stream.>"] }
              publish: { allow: ["ai.voice.transcription.>"] } } }
          { user: client, password: c }
        ] }"""
    )
    async with NatsServer(extra_args=("-c", str(config))) as server:
        worker, stop, task = await make_worker(
            nats_url=server.url, nats_user="worker", nats_password="w", return_handles=True
        )
        own = worker._intake.own
        client = await nats.connect(server.url, user="client", password="c")
        sessions = [sid() for _ in range(2)]
        inboxes = {s: await Inbox.open(client, s) for s in sessions}
        moving = []  # the sessions taken (or being taken) from own subscriptions, sampled

        async def sample() -> None:
            while True:
                moving.append(own.sessions)
                await asyncio.sleep(0.05)

        for s in sessions:  # one after the other: the second starts after the denial
            moving.clear()
            sampler = asyncio.create_task(sample())
            await stream_file(client, s, SPEECH_DIR / CLIP, speed=2.0)
            messages = await inboxes[s].until_closed(within_s=60)
            sampler.cancel()
            assert max(moving) == (1 if s == sessions[0] else 0)  # tried once, then never
            assert messages[-1]["reason"] == "end"
            assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND
            assert_sequences(messages)
            assert max(m["audio_end_s"] for m in finals(messages)) <= clip_seconds(CLIP) + 0.05
            assert not own.taken_from_own(s)
        said = [r for r in caplog.records if "denies this worker publishing" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR, said
        await client.close()
        stop.set()
        await asyncio.wait_for(task, 60)
