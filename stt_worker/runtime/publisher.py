"""Publisher side of the protocol: stream a WAV file or PCM16 samples as a live client would.

`stream_file` and `publish_pcm` send ``start``, fixed-length chunks paced at real time (or
faster), then ``end`` on ``ai.voice.stream.{session_id}``, and record in `StreamStats` when
each chunk left, so callers can measure latency from the end of the audio a result covers.
Used by ``stt-streaming stream`` / ``demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from nats.aio.client import Client as NatsClient

from stt_worker.core.protocol import Chunk, End, SpeakerId, Start, State, encode_client_message

Pcm16 = npt.NDArray[np.int16]


class WavFormatError(ValueError):
    """The file is not a PCM16 WAV that we can stream."""


@dataclass(slots=True)
class StreamStats:
    """What was sent, filled in while streaming so a concurrent reader can use it live."""

    session_id: str = ""
    sample_rate_hz: int = 0
    channels: int = 0
    chunk_ms: int = 0
    # Wall-clock (time.time()) send time of each chunk, and the session audio offset, in
    # seconds, at which that chunk's audio ends.
    chunk_send_times: list[float] = field(default_factory=list)
    chunk_end_s: list[float] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def chunks(self) -> int:
        return len(self.chunk_send_times)

    @property
    def audio_s(self) -> float:
        """Seconds of audio sent so far."""
        return self.chunk_end_s[-1] if self.chunk_end_s else 0.0

    @property
    def wall_s(self) -> float:
        """Wall-clock seconds from the first chunk to the last (0 before two chunks)."""
        if self.chunks < 2:
            return 0.0
        return self.chunk_send_times[-1] - self.chunk_send_times[0]

    def send_time_for(self, audio_end_s: float) -> float | None:
        """When the chunk that completed the audio up to `audio_end_s` was sent.

        That is the first chunk ending at or after the offset (results may round the offset a
        little past the last chunk, which then counts); None while it has not been sent.
        """
        if not self.chunk_end_s:
            return None
        index = bisect.bisect_left(self.chunk_end_s, audio_end_s - 1e-6)
        if index >= self.chunks:
            if audio_end_s - self.chunk_end_s[-1] > self.chunk_ms / 1000:
                return None
            index = self.chunks - 1
        return self.chunk_send_times[index]


def read_wav(path: Path) -> tuple[Pcm16, int]:
    """PCM16 samples shaped (frames, channels) and the sample rate, from any PCM16 WAV."""
    try:
        with wave.open(str(path), "rb") as wav:
            sample_width = wav.getsampwidth()
            channels = wav.getnchannels()
            sample_rate_hz = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except wave.Error as exc:
        # e.g. float or WAVE_FORMAT_EXTENSIBLE files, which the stdlib reader refuses.
        raise WavFormatError(f"{path}: not a PCM WAV file we can read ({exc})") from exc
    if sample_width != 2:
        raise WavFormatError(
            f"{path}: {8 * sample_width}-bit samples; only 16-bit PCM WAV is supported "
            "(convert with e.g. `sox in.wav -b 16 out.wav`)"
        )
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)
    return samples, sample_rate_hz


class PublishOptions(TypedDict, total=False):
    """The keyword options of `publish_pcm` that `stream_file` passes through."""

    chunk_ms: int
    speed: float
    state: State
    speaker_id: SpeakerId
    raw_audio: bool
    send_start: bool
    send_end: bool
    subject_prefix: str
    stats: StreamStats | None


async def stream_file(
    nc: NatsClient, session_id: str, path: Path, **options: Unpack[PublishOptions]
) -> StreamStats:
    """Stream a PCM16 WAV file (any rate and channel count) as one session; see `publish_pcm`."""
    # A worker may share this event loop (the demo, the tests): read off the loop.
    samples, sample_rate_hz = await asyncio.to_thread(read_wav, path)
    return await publish_pcm(nc, session_id, samples, sample_rate_hz=sample_rate_hz, **options)


async def publish_pcm(
    nc: NatsClient,
    session_id: str,
    samples: Pcm16,
    *,
    sample_rate_hz: int = 16_000,
    chunk_ms: int = 20,
    speed: float = 1.0,
    state: State = "listening",
    speaker_id: SpeakerId = None,
    raw_audio: bool = False,
    send_start: bool = True,
    send_end: bool = True,
    subject_prefix: str = "ai.voice.stream",
    stats: StreamStats | None = None,
) -> StreamStats:
    """Send `samples` (int16, shape (frames,) or (frames, channels)) as one session.

    Chunks of `chunk_ms` go out at real time divided by `speed` (0: as fast as possible),
    chunk i once its audio "has been captured", i.e. at t0 + (i + 1) * chunk_ms / speed on the
    monotonic clock; absolute deadlines keep the pace from drifting. Audio travels base64 in
    ``audio_b64`` like the seed, or as raw bytes in ``audio`` with `raw_audio`.

    Pass your own `stats` to read send times while the stream is still running. Passing the
    stats of an earlier call for the same session (sent with ``send_end=False``) continues
    it: chunk numbers and audio offsets carry on from where that call stopped.
    """
    frames = _as_frames(samples)
    if chunk_ms <= 0 or speed < 0:
        raise ValueError(f"need chunk_ms > 0 and speed >= 0, got {chunk_ms} and {speed}")
    chunks = _Chunks.cut(frames, sample_rate_hz, chunk_ms)
    subject = f"{subject_prefix}.{session_id}"
    stats = stats if stats is not None else StreamStats()
    # Chunks carry `seq` only when we know the session's count: we opened the session here or
    # continue a stream we numbered. Otherwise numbering from 0 again would look like repeats.
    numbered = send_start or stats.chunks > 0
    first_seq, offset_frames = _resume(stats, session_id, sample_rate_hz, chunks.channels, chunk_ms)
    if send_start:
        start = Start(
            session_id=session_id,
            sample_rate=sample_rate_hz,
            channels=chunks.channels,
            state=state,
            speaker_id=speaker_id,
        )
        await nc.publish(subject, encode_client_message(start))
    sender = _ChunkSender(nc, subject, stats, raw_audio, offset_frames)
    await sender.send(chunks, speed, first_seq if numbered else None)
    if send_end:
        await nc.publish(subject, encode_client_message(End()))
    await nc.flush()
    stats.finished_at = time.time()
    return stats


def _as_frames(samples: Pcm16) -> Pcm16:
    """`samples` shaped (frames, channels)."""
    if samples.dtype != np.int16:
        raise TypeError(f"samples must be int16 PCM, got {samples.dtype}")
    if samples.ndim not in (1, 2):
        raise ValueError(f"samples must be (frames,) or (frames, channels), got {samples.shape}")
    return samples if samples.ndim == 2 else samples[:, np.newaxis]


def _resume(
    stats: StreamStats, session_id: str, sample_rate_hz: int, channels: int, chunk_ms: int
) -> tuple[int, int]:
    """Where this call's chunks start in the session: the next chunk number and the audio
    offset in frames (both 0 for fresh `stats`); fills in what `stats` describes."""
    continuing = stats.chunks > 0
    if continuing and (stats.session_id, stats.sample_rate_hz) != (session_id, sample_rate_hz):
        raise ValueError(
            f"stats are of session {stats.session_id!r} at {stats.sample_rate_hz} Hz, "
            f"cannot continue it as {session_id!r} at {sample_rate_hz} Hz"
        )
    first_seq, offset_frames = stats.chunks, round(stats.audio_s * sample_rate_hz)
    stats.session_id = session_id
    stats.sample_rate_hz = sample_rate_hz
    stats.channels = channels
    stats.chunk_ms = chunk_ms
    if stats.started_at is None:
        stats.started_at = time.time()
    return first_seq, offset_frames


@dataclass(frozen=True, slots=True)
class _Chunks:
    """The audio as wire bytes, and how it is cut into chunks."""

    pcm: bytes
    channels: int
    sample_rate_hz: int
    frames_per_chunk: int

    @classmethod
    def cut(cls, frames: Pcm16, sample_rate_hz: int, chunk_ms: int) -> _Chunks:
        # Little-endian on the wire whatever the host order; one copy, sliced per chunk.
        pcm = frames.astype("<i2", copy=False).tobytes()
        per_chunk = max(1, round(sample_rate_hz * chunk_ms / 1000))
        return cls(pcm, frames.shape[1], sample_rate_hz, per_chunk)

    @property
    def chunk_s(self) -> float:
        return self.frames_per_chunk / self.sample_rate_hz

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        """Each chunk's bytes and the frame its audio ends at."""
        frame_bytes = 2 * self.channels
        total = len(self.pcm) // frame_bytes
        for first in range(0, total, self.frames_per_chunk):
            last = min(first + self.frames_per_chunk, total)
            yield self.pcm[first * frame_bytes : last * frame_bytes], last


@dataclass(slots=True)
class _ChunkSender:
    """Publishes chunks paced at real time over `speed`, recording each in `stats`."""

    nc: NatsClient
    subject: str
    stats: StreamStats
    raw_audio: bool
    offset_frames: int  # where this call's audio starts in the session

    async def send(self, chunks: _Chunks, speed: float, first_seq: int | None) -> None:
        t0 = time.monotonic()
        for index, (data, last) in enumerate(chunks):
            if speed > 0:
                deadline = t0 + (index + 1) * chunks.chunk_s / speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0)  # as fast as possible, but let a worker in this loop run
            seq = first_seq + index if first_seq is not None else None
            sent_at = time.time()
            await self.nc.publish(
                self.subject, encode_client_message(self._chunk(data, sent_at, seq))
            )
            self.stats.chunk_send_times.append(sent_at)
            self.stats.chunk_end_s.append((self.offset_frames + last) / chunks.sample_rate_hz)

    def _chunk(self, data: bytes, sent_at: float, seq: int | None) -> Chunk:
        if self.raw_audio:
            return Chunk(audio=data, timestamp=sent_at, seq=seq)
        b64 = base64.b64encode(data).decode("ascii")
        return Chunk(audio_b64=b64, timestamp=sent_at, seq=seq)
