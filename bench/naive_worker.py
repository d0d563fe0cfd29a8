"""The capacity benchmark's naive baseline: what the seed module describes, and nothing more.

Per session, every chunk's PCM goes into a buffer. The buffer is transcribed whole when it
reaches ``STT_BUFFER_SIZE_BYTES``, when no chunk came for ``STT_CHUNK_TIMEOUT`` seconds, or
at ``end``, with Whisper's fixed 30 s window (our CTranslate2 engine with
``WHISPER_WINDOW_PAD_S=30``: the same model, weights, beam and text filters as the worker),
and the text is published in the seed's nine fields. No VAD gating (silence is decoded
too), no scheduling: each full buffer goes straight to the engine's one executor thread
(first come, first served), as the seed's ``run_in_executor`` does.

For measurement only, each result also carries ``type``, ``audio_start_s`` and
``audio_end_s`` (where the buffer lies in the session's audio), like the worker's.

Run by `bench.capacity` in its own process, with the worker's command line and readiness
line: ``python -m bench.naive_worker serve --engine faster-whisper`` (settings from the
environment, as the worker reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

import msgspec
import nats
import numpy as np
from nats.aio.msg import Msg

from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.errors import SttError
from stt_worker.core.protocol import Chunk, End, Start, StateChange, chunk_pcm_bytes
from stt_worker.core.protocol import decode_client_message as decode
from stt_worker.engines import create_engine
from stt_worker.engines.base import DecodeOptions, Engine

logger = logging.getLogger("bench.naive_worker")

TICK_S = 0.1


@dataclass(slots=True)
class _Buffer:
    session_id: str
    speaker_id: str | int | None = None
    state: str = "listening"
    pcm: bytearray = field(default_factory=bytearray)
    start_s: float = 0.0  # session audio offset of the buffer's first sample
    last_chunk_at: float = 0.0
    sequence: int = 0


class NaiveWorker:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._buffers: dict[str, _Buffer] = {}
        self._nc: nats.NATS | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.engine.warmup()
        self._nc = await nats.connect(self.settings.nats_url, name="naive-baseline")
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            sub = await self._nc.subscribe(
                self.settings.stream_subject,
                cb=self._on_message,
                pending_msgs_limit=self.settings.pending_msgs_limit,
            )
            logger.info("worker ready")
            ticker = tasks.create_task(self._tick_forever())
            await stop.wait()
            await sub.unsubscribe()
            ticker.cancel()
        await self._nc.drain()

    async def _on_message(self, msg: Msg) -> None:
        session_id = msg.subject.rsplit(".", 1)[-1]
        try:
            message = decode(msg.data)
            buffer = self._buffers.get(session_id)
            if buffer is None:
                buffer = self._buffers[session_id] = _Buffer(session_id)
            match message:
                case Start(speaker_id=speaker_id, state=state):
                    buffer.speaker_id, buffer.state = speaker_id, state
                case StateChange(state=state):
                    buffer.state = state
                case Chunk():
                    buffer.pcm += chunk_pcm_bytes(message)
                    buffer.last_chunk_at = time.monotonic()
                    if len(buffer.pcm) >= self.settings.buffer_size_bytes:
                        self._flush(buffer)
                case End():
                    self._flush(buffer)
                    del self._buffers[session_id]
        except SttError as exc:
            logger.warning("rejected message: %s", exc.message)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for buffer in list(self._buffers.values()):
                if buffer.pcm and now - buffer.last_chunk_at >= self.settings.chunk_timeout_s:
                    self._flush(buffer)

    def _flush(self, buffer: _Buffer) -> None:
        if not buffer.pcm:
            return
        pcm, start_s = bytes(buffer.pcm), buffer.start_s
        buffer.pcm.clear()
        buffer.start_s += len(pcm) / (SAMPLE_RATE_HZ * BYTES_PER_SAMPLE)
        assert self._tasks is not None
        self._tasks.create_task(self._transcribe(buffer, pcm, start_s))

    async def _transcribe(self, buffer: _Buffer, pcm: bytes, start_s: float) -> None:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        try:
            transcript = await self.engine.transcribe(audio, DecodeOptions())
        except SttError as exc:
            logger.error("transcription failed: %s", exc.message)
            return
        result = {
            "session_id": buffer.session_id,
            "transcript": transcript.text.strip(),
            "sequence": buffer.sequence,
            "is_partial": False,
            "is_final": True,
            "timestamp": time.time(),
            "speaker_id": buffer.speaker_id,
            "has_voice_activity": bool(transcript.text.strip()),
            "state": buffer.state,
            "type": "transcript",
            "audio_start_s": round(start_s, 3),
            "audio_end_s": round(start_s + audio.size / SAMPLE_RATE_HZ, 3),
        }
        buffer.sequence += 1
        assert self._nc is not None
        subject = f"{self.settings.transcription_subject_prefix}.{buffer.session_id}"
        await self._nc.publish(subject, msgspec.msgpack.encode(result))


async def serve(engine_kind: str) -> None:
    settings = load_settings()
    engine = await asyncio.to_thread(create_engine, settings, engine_kind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await NaiveWorker(settings, engine).run(stop)
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--engine", default="faster-whisper")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
