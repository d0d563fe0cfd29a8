"""A flood of sessions that start and never end, against the worker in its own process.

Memory is the process's RSS (psutil), read at three points: ready, with every session of a
flood open, and after idle eviction closed them all. Two floods in a row: eviction must hand
the memory back both times, and nothing may stay behind from one to the next.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import msgpack
import psutil
import pytest
from nats.aio.client import Client

from tests.helpers import REPO

SESSIONS = 1000
MIB = 1024 * 1024
# Each session: 48 kHz (so a resampler of its own), 1 s of audio in 100 ms chunks.
RATE_HZ = 48_000
CHUNKS = 10


@pytest.fixture
async def worker_process(nats_url: str) -> AsyncIterator[psutil.Process]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "STT_SESSION_IDLE_TIMEOUT_S": "2",
        "STT_MAX_SESSIONS": str(SESSIONS),
        "STT_HTTP_PORT": "-1",
        "STT_LOG_LEVEL": "INFO",
        "STT_LOG_FORMAT": "json",
        "OTEL_ENABLED": "false",
        "STT_ENGINE": "faster-whisper",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_worker.tools.cli",
        "serve",
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    ready = asyncio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        async for line in process.stderr:  # drained to the end: a full pipe would stall it
            if b"worker ready" in line:
                ready.set()

    reader = asyncio.create_task(read_log())
    try:
        await asyncio.wait_for(ready.wait(), 120)
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 60)
        await reader


async def flood(nc: Client, round_: int) -> None:
    """Open SESSIONS sessions that never end; return once the worker has taken them all."""
    # Silence: VAD never opens an utterance, so no inference runs and eviction is immediate.
    silence = bytes(RATE_HZ // 10 * 2)
    for index in range(SESSIONS):
        subject = f"ai.voice.stream.flood-{round_}-{index}"
        await nc.publish(subject, msgpack.packb({"type": "start", "sample_rate": RATE_HZ}))
        for _ in range(CHUNKS):
            await nc.publish(subject, msgpack.packb({"type": "chunk", "audio": silence}))
    # The worker takes one subscription's messages in order: the answer to this probe
    # means every session above is open.
    probe = await nc.subscribe(f"ai.voice.transcription.probe-{round_}")
    await nc.publish(f"ai.voice.stream.probe-{round_}", msgpack.packb({"type": "end"}))
    answer = msgpack.unpackb((await probe.next_msg(timeout=60)).data)
    assert answer["code"] == "unknown_session"


async def test_a_flood_of_unended_sessions_is_bounded_and_evicted(worker_process, nc):
    closed: asyncio.Queue[dict] = asyncio.Queue()

    async def on_message(msg) -> None:
        message = msgpack.unpackb(msg.data)
        if message.get("type") == "session_closed":
            closed.put_nowait(message)

    await nc.subscribe("ai.voice.transcription.>", cb=on_message)
    await nc.flush()
    baseline = worker_process.memory_info().rss
    figures = []
    for round_ in (1, 2):
        await flood(nc, round_)
        peak = worker_process.memory_info().rss
        async with asyncio.timeout(60):
            reasons = [(await closed.get())["reason"] for _ in range(SESSIONS)]
        assert set(reasons) == {"idle"}
        figures.append((peak, worker_process.memory_info().rss))
    (peak1, after1), (peak2, after2) = figures
    per_session = (peak1 - baseline) / SESSIONS
    report = (
        f"RSS baseline {baseline / MIB:.1f} MiB; flood 1 peak {peak1 / MIB:.1f}, after "
        f"eviction {after1 / MIB:.1f}; flood 2 peak {peak2 / MIB:.1f}, after {after2 / MIB:.1f}; "
        f"{per_session / 1024:.1f} KiB per session"
    )
    print(report)
    # Bounded: STT_MAX_SESSIONS (1,000 by default) sessions of this kind fit in 256 MiB.
    assert per_session < 256 * 1024, report
    # Handed back: the worker trims the freed heap, so RSS returns to where it started...
    assert max(after1, after2) < baseline + 8 * MIB, report
    # ... and nothing stays behind from one flood to the next.
    assert after2 - after1 < 4 * MIB, report
