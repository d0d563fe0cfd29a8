"""The adapters' side of a worker session (`integrations/worker_session.py`) against a real
nats-server: what a `session_closed` means for the chunks already sent after it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from stt_worker.config import load_settings
from stt_worker.core.protocol import CloseReason, SessionClosed, Start, encode_server_message
from stt_worker.integrations.worker_session import WorkerSession
from tests.helpers import until

CHUNK = b"\0\0" * 960  # 20 ms at 48 kHz


@pytest.mark.parametrize(
    ("reason", "last_seq", "still_open"),
    [
        ("idle", 3, True),  # chunks 4 and 5 came after it: the worker opened the next session
        ("max_duration", 3, True),
        ("idle", 5, False),  # it took every chunk: the next audio needs a `start`
        ("idle", None, False),  # a worker that does not say (older than `last_seq`)
        ("shutdown", 3, False),  # a drain: the later chunks went to another worker
        ("end", 3, False),
    ],
)
async def test_a_close_tells_whether_the_next_audio_needs_a_start(
    nats_url, nc, reason: CloseReason, last_seq: int | None, still_open: bool
):
    session = WorkerSession(load_settings(nats_url=nats_url), f"ws-{uuid.uuid4().hex[:8]}")
    messages = await session.connect("test")
    seen: list[object] = []

    async def read() -> None:
        async for message in messages:
            seen.append(message)

    reader = asyncio.create_task(read())
    try:
        await session.open(Start(sample_rate=48_000))
        for _ in range(5):
            await session.chunk(CHUNK)
        closed = SessionClosed(session.session_id, reason, time.time(), None, 1, last_seq=last_seq)
        subject = f"ai.voice.transcription.{session.session_id}"
        await nc.publish(subject, encode_server_message(closed))
        await until(lambda: seen, within_s=5)
        assert seen == [closed]
        assert session.is_open is still_open
    finally:
        await session.close()
        reader.cancel()
