"""Load generator of the capacity benchmark: N live sessions published on one NATS connection.

A speech session streams a timeline of the shared clips, looped in an order of its own with
natural pauses between them (1-3 s of quiet room noise, as a microphone sends between
turns); a silent session streams room noise only. Both send 20 ms chunks (``audio_b64``,
the seed's wire format) at real-time pace, and start staggered over a ramp.

One task publishes every session's chunk of a tick in one batch on one connection
(`BatchPublisher`): about a microsecond per message, which keeps 1,000 sessions (50,000
messages/s) in real time from one Python process, where a task and a timer per session, or
nats-py's per-message `publish`, would not. How late each tick went
out is recorded, so a run in which the generator itself fell behind says so.

Every message the worker publishes back is recorded with its receive time; `send_time`
maps an audio offset of a session to the wall time its chunk left, which is what latencies
are measured from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.protocol import (
    Chunk,
    End,
    ServerMessage,
    SessionClosed,
    Start,
    decode_server_message,
    encode_client_message,
)
from stt_worker.core.vad import FRAME_MS, FRAME_SAMPLES, DetectorFactory, label_stream
from stt_worker.evaluation.results import Clip

CHUNK_S = FRAME_MS / 1000  # one 20 ms VAD frame per chunk
PAUSE_S = (1.0, 3.0)  # natural pause between two clips of a session
ROOM_NOISE_RMS = 8.0  # int16 units, about -72 dBFS: a quiet room through a microphone
SILENT_VARIANTS = 50  # distinct noise chunks
SILENT_FRAMES = 10  # of them, the ones each silent session cycles through


def room_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    return np.clip(rng.normal(0.0, ROOM_NOISE_RMS, samples), -32768, 32767).astype(np.int16)


def speech_timeline(
    clips: Sequence[Clip], index: int, duration_s: float, detector: DetectorFactory
) -> Clip:
    """Session `index`'s audio: clips from a per-session offset, looped with pauses, at
    least `duration_s` long, with the worker's own VAD decision per frame (the same detector
    over the same 20 ms grid as the worker, so speech ends match its endpoints)."""
    rng = np.random.default_rng(index)
    pieces = [room_noise(rng, int(rng.uniform(0.2, PAUSE_S[0]) * SAMPLE_RATE_HZ))]
    names = []
    total = pieces[0].size
    position = index % len(clips)
    while total < duration_s * SAMPLE_RATE_HZ:
        clip = clips[position % len(clips)]
        position += 1
        pause = room_noise(rng, int(rng.uniform(*PAUSE_S) * SAMPLE_RATE_HZ))
        pieces += [clip.pcm, pause]
        names.append(clip.name)
        total += clip.pcm.size + pause.size
    pcm = np.concatenate(pieces)
    pcm = pcm[: pcm.size - pcm.size % FRAME_SAMPLES]
    speech = label_stream(detector(), pcm)
    return Clip(f"session-{index}", Path("-"), " ".join(names), pcm, speech)


@dataclass(slots=True)
class SessionPlan:
    session_id: str
    start_tick: int
    audio: Clip | None  # None: a silent session (room noise)


@dataclass(slots=True)
class Received:
    session_id: str
    message: ServerMessage
    received_at: float  # time.time()


@dataclass(slots=True)
class LoadRun:
    """What one run sent and received."""

    plans: list[SessionPlan]
    ticks: int  # chunks of a session that starts at tick 0
    tick_wall: np.ndarray = field(default_factory=lambda: np.zeros(0))  # time.time() per tick
    lateness_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per tick
    messages_sent: int = 0
    received: list[Received] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0  # when the last `end` left

    def send_time(self, plan: SessionPlan, audio_end_s: float) -> float | None:
        """Wall time the chunk completing `plan`'s audio up to `audio_end_s` was sent."""
        chunk = max(0, math.ceil(audio_end_s / CHUNK_S - 1e-6) - 1)
        tick = plan.start_tick + chunk
        if chunk >= self.ticks - plan.start_tick or tick >= self.tick_wall.size:
            return None
        return float(self.tick_wall[tick])

    def lateness_summary(self) -> dict[str, float]:
        late = self.lateness_s
        if late.size == 0:
            return {}
        wall = float(self.tick_wall[-1] - self.tick_wall[0]) if self.tick_wall.size > 1 else 0.0
        audio = (self.tick_wall.size - 1) * CHUNK_S
        return {
            "ticks": int(late.size),
            "lateness_p50_ms": round(float(np.percentile(late, 50)) * 1000, 2),
            "lateness_p99_ms": round(float(np.percentile(late, 99)) * 1000, 2),
            "lateness_max_ms": round(float(late.max()) * 1000, 2),
            "ticks_late_over_20ms": int((late > CHUNK_S).sum()),
            # 1.0 = the generator kept real time over the run.
            "pace": round(audio / wall, 4) if wall else 1.0,
        }


def plan_sessions(
    count: int, ramp_s: float, prefix: str, audio: Sequence[Clip | None], *, random: bool = False
) -> list[SessionPlan]:
    """`count` sessions, `audio[i]` for session i, starting over `ramp_s`: evenly spread, or
    with `random` at seeded uniform offsets (session 0 at once), as independent clients
    are, so that periodic work (the baseline's full buffers) falls at random phases."""
    ramp_ticks = round(ramp_s / CHUNK_S)
    rng = np.random.default_rng(count)
    starts = [ramp_ticks * i // max(1, count) for i in range(count)]
    if random:
        starts = [0, *sorted(int(t) for t in rng.integers(0, max(1, ramp_ticks), count - 1))]
    return [SessionPlan(f"{prefix}-{i:04d}", starts[i], audio[i]) for i in range(count)]


def _silent_payloads(seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        encode_client_message(
            Chunk(audio_b64=base64.b64encode(room_noise(rng, FRAME_SAMPLES).tobytes()).decode())
        )
        for _ in range(SILENT_VARIANTS)
    ]


class BatchPublisher:
    """Publishes over its own connection speaking the NATS client protocol directly: each
    tick's messages go out as one ``PUB`` batch in one socket write. nats-py spends ~20 µs
    of Python per `publish`; at 50,000 messages/s that alone is a core, which 2 cores
    cannot spare beside the worker and the server (measured: 50% of real time at 1,000
    sessions). Only what a publisher needs: CONNECT, PUB, and PONG to the server's PING."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pongs: asyncio.Queue[None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def connect(self, url: str, name: str = "stt-capacity-load") -> None:
        address = urlsplit(url)
        self._reader, self._writer = await asyncio.open_connection(
            address.hostname or "127.0.0.1", address.port or 4222
        )
        info = await self._reader.readline()
        if not info.startswith(b"INFO "):
            raise ConnectionError(f"{url}: not a NATS server ({info[:40]!r})")
        options = {"verbose": False, "pedantic": False, "name": name, "lang": "python"}
        self._writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        self._task = asyncio.create_task(self._read())
        await self.flush()

    async def _read(self) -> None:
        assert self._reader is not None and self._writer is not None
        while line := await self._reader.readline():
            if line.startswith(b"PING"):
                self._writer.write(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                self._pongs.put_nowait(None)
            elif line.startswith(b"-ERR"):
                raise ConnectionError(f"nats-server: {line.decode(errors='replace').strip()}")

    def write(self, frames: list[bytes]) -> None:
        """Frames from `frame`, written as one batch."""
        assert self._writer is not None
        self._writer.write(b"".join(frames))

    async def flush(self) -> None:
        """Until the server has processed everything written so far (a PING round trip)."""
        assert self._writer is not None and self._task is not None
        self._writer.write(b"PING\r\n")
        await self._writer.drain()
        pong = asyncio.ensure_future(self._pongs.get())
        await asyncio.wait({pong, self._task}, timeout=10, return_when="FIRST_COMPLETED")
        if not pong.done():
            pong.cancel()
            if self._task.done():
                self._task.result()  # the reader's error, if it failed
            raise TimeoutError("no PONG from nats-server")

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


def pub_header(subject: str) -> bytes:
    return b"PUB " + subject.encode() + b" "


def frame(header: bytes, payload: bytes) -> bytes:
    return header + b"%d\r\n" % len(payload) + payload + b"\r\n"


async def run_load(
    nc: NatsClient,
    publisher: BatchPublisher,
    plans: list[SessionPlan],
    duration_s: float,
    *,
    stream_prefix: str = "ai.voice.stream",
    transcription_prefix: str = "ai.voice.transcription",
    results_grace_s: float = 5.0,
    start: Start | None = None,
) -> LoadRun:
    """Stream every plan until `duration_s` after the first tick, then `end` each session
    and collect what comes back until every session closed or `results_grace_s` passed.
    `start`: what opens each session (its options), a bare `start` by default."""
    ticks = round(duration_s / CHUNK_S)
    run = LoadRun(plans, ticks)
    closed: set[str] = set()
    all_closed = asyncio.Event()

    async def on_result(msg: Msg) -> None:
        session_id = msg.subject.rsplit(".", 1)[-1]
        message = decode_server_message(msg.data)
        run.received.append(Received(session_id, message, time.time()))
        if isinstance(message, SessionClosed):
            closed.add(session_id)
            if len(closed) == len(plans):
                all_closed.set()

    sub = await nc.subscribe(f"{transcription_prefix}.>", cb=on_result, pending_msgs_limit=-1)
    await nc.flush()
    headers = [pub_header(f"{stream_prefix}.{plan.session_id}") for plan in plans]
    start_payload = encode_client_message(start or Start())
    silent = _silent_payloads()
    # Framed once per silent session: a tick of 1,000 silent sessions is then a join.
    silent_frames = [
        [frame(headers[i], silent[(i + k) % SILENT_VARIANTS]) for k in range(SILENT_FRAMES)]
        if plan.audio is None
        else []
        for i, plan in enumerate(plans)
    ]
    pcm_bytes = [None if p.audio is None else p.audio.pcm.tobytes() for p in plans]
    chunk_bytes = FRAME_SAMPLES * 2
    # Sessions by start tick, so each tick only looks at the sessions already streaming.
    order = sorted(range(len(plans)), key=lambda i: plans[i].start_tick)
    tick_wall = np.zeros(ticks)
    lateness = np.zeros(ticks)
    sent = 0
    active = 0
    t0 = time.monotonic() + 0.1
    run.started_at = time.time() + 0.1
    for tick in range(ticks):
        deadline = t0 + (tick + 1) * CHUNK_S
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness[tick] = time.monotonic() - deadline
        now = time.time()
        tick_wall[tick] = now
        frames = []
        while active < len(order) and plans[order[active]].start_tick <= tick:
            frames.append(frame(headers[order[active]], start_payload))
            sent += 1
            active += 1
        for i in order[:active]:
            chunk = tick - plans[i].start_tick
            pcm = pcm_bytes[i]
            if pcm is None:
                frames.append(silent_frames[i][chunk % SILENT_FRAMES])
                continue
            piece = pcm[chunk * chunk_bytes : (chunk + 1) * chunk_bytes]
            b64 = base64.b64encode(piece).decode("ascii")
            payload = encode_client_message(Chunk(audio_b64=b64, timestamp=now, seq=chunk))
            frames.append(frame(headers[i], payload))
        publisher.write(frames)
        await publisher.drain()  # returns at once unless the socket is backed up
        sent += active
    end = encode_client_message(End())
    publisher.write([frame(header, end) for header in headers])
    await publisher.flush()
    run.ended_at = time.time()
    run.messages_sent = sent + len(headers)
    run.tick_wall, run.lateness_s = tick_wall, lateness
    # A worker that does not close sessions (the baseline) gets the whole grace.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_closed.wait(), results_grace_s)
    await sub.unsubscribe()
    return run
