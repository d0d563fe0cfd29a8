"""One session's audio pipeline: a publisher's PCM in, the 20 ms VAD frames a `Session` takes
out.

`AudioPipeline` resamples to 16 kHz mono, takes the assistant's echo out once the session sends
``playback``, and cuts the result into VAD frames; the costly part runs on the DSP executor.
`checked_pcm` and `AudioPipeline.check_order` are the checks a chunk passes before its audio
is used.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from stt_worker.config import Settings
from stt_worker.core.audio import BYTES_PER_SAMPLE, AudioNormalizer, Pcm16
from stt_worker.core.echo import EchoCanceller
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import Chunk, ErrorCode, Playback, chunk_pcm_bytes
from stt_worker.core.vad import (
    DetectorFactory,
    Frames,
    NoDetector,
    VoiceActivityDetector,
    WebrtcDetector,
)
from stt_worker.engines.silero_vad import SileroDetector, shared_model

logger = logging.getLogger(__name__)


def dsp_executor() -> ThreadPoolExecutor:
    """Threads for the per-chunk signal processing too costly for the loop (echo
    cancellation, Silero VAD). One job per session at a time (its inbox task awaits it), so
    the queue holds at most one job of each session and a flooding one waits behind itself."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="stt-dsp")


def speech_detectors(settings: Settings) -> DetectorFactory:
    """A new session's speech detector, as `STT_VAD_ENGINE` chooses; Silero's model is loaded
    here, once, so a worker without it fails at start rather than at its first session."""
    if not settings.enable_vad:
        return NoDetector
    if settings.vad_engine == "webrtc":
        return functools.partial(WebrtcDetector, settings.vad_aggressiveness)
    return functools.partial(SileroDetector, shared_model(), settings.vad_threshold)


def checked_pcm(message: Chunk | Playback, max_chunk_bytes: int) -> bytes:
    """The message's audio within STT_MAX_CHUNK_BYTES, checked before any session opens for
    it, so a bad message costs nothing; oversized base64 is not even decoded."""
    encoded = message.audio_b64
    decoded_bytes = len(encoded) // 4 * 3 if message.audio is None and encoded else 0
    if decoded_bytes > max_chunk_bytes + 3:
        raise _too_large(decoded_bytes, max_chunk_bytes)
    pcm = chunk_pcm_bytes(message)
    if len(pcm) > max_chunk_bytes:
        raise _too_large(len(pcm), max_chunk_bytes)
    return pcm


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"chunk of {size} bytes exceeds STT_MAX_CHUNK_BYTES={limit}; split it into smaller chunks",
        code=ErrorCode.CHUNK_TOO_LARGE,
    )


class AudioPipeline:
    """A session's microphone audio (resampler, echo canceller, VAD) and the assistant's
    playback audio that the echo canceller takes out of it."""

    def __init__(
        self, sample_rate_hz: int, channels: int, *, detector: DetectorFactory, dsp: Executor
    ) -> None:
        self._normalizer = AudioNormalizer(sample_rate_hz, channels)
        self._vad = VoiceActivityDetector(detector())
        self._dsp = dsp
        self.last_seq: int | None = None
        # From the first `playback`: the assistant's audio, and its echo taken out of the mic.
        self._echo: EchoCanceller | None = None
        self._playback: AudioNormalizer | None = None

    @property
    def sample_rate_hz(self) -> int:
        """The publisher's microphone format (its latest ``start``)."""
        return self._normalizer.sample_rate_hz

    @property
    def channels(self) -> int:
        return self._normalizer.channels

    def duration_s(self, pcm: bytes) -> float:
        """Seconds of audio in `pcm`, in the microphone's format."""
        return len(pcm) / (self.sample_rate_hz * self.channels * BYTES_PER_SAMPLE)

    def check_order(self, seq: int | None) -> None:
        """Take a chunk's `seq`: a repeated or late one is refused (unnumbered ones pass)."""
        if seq is None:
            return
        if self.last_seq is not None and seq <= self.last_seq:
            raise ProtocolError(
                f"chunk seq {seq} after seq {self.last_seq}: repeated or late, not used",
                code=ErrorCode.CHUNK_OUT_OF_ORDER,
            )
        self.last_seq = seq

    async def frames(self, pcm: bytes) -> Frames:
        """A chunk's microphone audio as VAD frames."""
        if self._echo is None and self._vad.inline:
            return self._clean(pcm)  # tens of microseconds: not worth a thread hop
        # Echo cancellation costs about 150-550 us a chunk, Silero about 120 us on a chunk
        # that completes one of its windows: off the loop. The session's inbox task hands its
        # next message over only once this returns, so its order holds.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._dsp, self._clean, pcm)

    def playback(self, message: Playback, pcm: bytes) -> None:
        """The assistant's audio: queued as the echo reference for this session's mic."""
        if self._playback is None:
            self._playback = AudioNormalizer(
                message.sample_rate or self.sample_rate_hz, message.channels or self.channels
            )
        if self._echo is None:
            self._echo = EchoCanceller()  # ProtocolError when the extra is missing
            logger.info("echo cancellation on")
        self._echo.playback(self._playback.push(pcm))

    def reformat(self, sample_rate_hz: int, channels: int) -> list[Frames]:
        """A repeated ``start``: a new microphone format ends the old one's audio (flushed,
        returned) and resamples from here on; the same format changes nothing."""
        if (sample_rate_hz, channels) == (self.sample_rate_hz, self.channels):
            return []
        flushed = self.flush()
        self._normalizer = AudioNormalizer(sample_rate_hz, channels)
        return flushed

    def flush(self) -> list[Frames]:
        """The resampler's tail and the last partial frame, zero-padded, in order."""
        audio = self._cancel_echo(self._normalizer.flush())
        if self._echo is not None:
            audio = np.concatenate([audio, self._echo.flush()])
        pushed = self._vad.push(audio)
        return [pushed, self._vad.flush()]

    def _clean(self, pcm: bytes) -> Frames:
        return self._vad.push(self._cancel_echo(self._normalizer.push(pcm)))

    def _cancel_echo(self, samples: Pcm16) -> Pcm16:
        return samples if self._echo is None else self._echo.process(samples)
