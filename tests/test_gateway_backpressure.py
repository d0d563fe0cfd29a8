"""A client that does not read: the gateway's outbox stays bounded, partials go first, and a
client that would lose finals is closed with 1013.

The results are published by the test on the session's real transcription subject (as the
worker would, only larger and faster than speech can make them), so the client's socket
fills within a second instead of hours of speech.
"""

from __future__ import annotations

import json
import secrets

import pytest
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stt_worker.core.protocol import Transcription, encode_server_message
from tests.helpers import until

# 64 KB that permessage-deflate cannot shrink: the socket's buffers fill after some dozens.
BIG_TEXT = secrets.token_urlsafe(48_000)
MAX_QUEUE = 8


def result(session_id: str, utterance_id: int, text: str, *, final: bool) -> bytes:
    return encode_server_message(
        Transcription(
            session_id=session_id,
            transcript=text,
            sequence=utterance_id,
            is_partial=not final,
            is_final=final,
            timestamp=0.0,
            speaker_id=None,
            has_voice_activity=True,
            state="listening",
            utterance_id=utterance_id,
        )
    )


async def open_idle_client(gateway, nc: Client, session_id: str) -> ClientConnection:
    """A connection whose worker session is open (its results are subscribed to)."""
    worker_id = gateway.worker_id(session_id)
    started = await nc.subscribe(f"ai.voice.stream.{worker_id}", max_msgs=1)
    ws = await connect(f"{gateway.ws_url}?session_id={session_id}", max_queue=2)
    await ws.send(json.dumps({"type": "start"}))
    await started.next_msg(timeout=10)  # the gateway subscribed before it sent this
    return ws


async def fill_with_partials(gateway, nc: Client, session_id: str) -> int:
    """Publish big partials until the outbox drops one; how many were published."""
    stats = gateway.gateway.stats
    worker_id = gateway.worker_id(session_id)
    for published in range(1, 2000):
        await nc.publish(
            f"ai.voice.transcription.{worker_id}", result(worker_id, 1, BIG_TEXT, final=False)
        )
        await nc.flush()
        bridge = gateway.gateway.bridges[worker_id]
        assert len(bridge._sender.outbox) <= MAX_QUEUE
        if stats.dropped_partials:
            return published
    pytest.fail("the client's socket never filled")


async def test_slow_reader_loses_partials_not_finals(nc, make_gateway) -> None:
    gateway = await make_gateway(max_queue=MAX_QUEUE)
    session_id = "bp-partials"
    ws = await open_idle_client(gateway, nc, session_id)
    published = await fill_with_partials(gateway, nc, session_id)
    worker_id = gateway.worker_id(session_id)
    subject = f"ai.voice.transcription.{worker_id}"
    for utterance in (2, 3, 4):
        await nc.publish(subject, result(worker_id, utterance, f"final {utterance}", final=True))
    await nc.flush()
    await until(lambda: gateway.gateway.stats.dropped_partials >= 4, within_s=10)

    frames = []
    while not frames or frames[-1]["text"] != "final 4":
        frames.append(json.loads(await ws.recv()))
    partials = [f for f in frames if not f["is_final"]]
    finals = [f["text"] for f in frames if f["is_final"]]
    assert finals == ["final 2", "final 3", "final 4"]
    assert len(partials) < published
    assert gateway.gateway.stats.overflow_closes == 0
    # Still open and serving.
    await ws.send(json.dumps({"type": "final"}))
    await ws.close()


async def test_slow_reader_that_would_lose_finals_is_closed_1013(nc, make_gateway) -> None:
    gateway = await make_gateway(max_queue=MAX_QUEUE)
    session_id = "bp-finals"
    ws = await open_idle_client(gateway, nc, session_id)
    await fill_with_partials(gateway, nc, session_id)
    worker_id = gateway.worker_id(session_id)
    subject = f"ai.voice.transcription.{worker_id}"
    for utterance in range(2, 2 + MAX_QUEUE + 1):
        await nc.publish(subject, result(worker_id, utterance, BIG_TEXT, final=True))
    await nc.flush()
    await until(lambda: gateway.gateway.stats.overflow_closes == 1, within_s=10)

    # Reading now: what was already on its way, then the close.
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1013
    assert "too slow" in (ws.close_reason or "")
    await until(lambda: worker_id not in gateway.gateway.bridges, within_s=10)


async def test_results_held_behind_an_open_session_past_the_bound_close_1013(
    nc, make_gateway
) -> None:
    """A flush opens the connection's next worker session on the next audio; that session's
    results wait until the first one closes, and past `max_queue` of them the client is closed
    as too slow (it was an AttributeError once)."""
    gateway = await make_gateway(max_queue=MAX_QUEUE)
    session_id = "bp-held"
    ws = await open_idle_client(gateway, nc, session_id)
    first = gateway.worker_id(session_id)
    second = f"{first}~2"
    await ws.send(b"\x00\x00" * 160)
    await ws.send(json.dumps({"type": "final"}))
    second_started = await nc.subscribe(f"ai.voice.stream.{second}", max_msgs=1)
    await ws.send(b"\x00\x00" * 160)
    await second_started.next_msg(timeout=10)  # subscribed to its results before this

    subject = f"ai.voice.transcription.{second}"
    for utterance in range(1, MAX_QUEUE + 1):
        await nc.publish(subject, result(second, utterance, f"held {utterance}", final=True))
    await nc.flush()
    assert gateway.gateway.stats.overflow_closes == 0
    await nc.publish(subject, result(second, MAX_QUEUE + 1, "one too many", final=True))
    await nc.flush()
    await until(lambda: gateway.gateway.stats.overflow_closes == 1, within_s=10)

    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1013
    assert "held behind an open session" in (ws.close_reason or "")
