"""Audio conversion: publisher PCM16 (any rate, any channel count) to 16 kHz mono int16.

Measured here: decoding a 20 ms chunk, downmixing and resampling 48 kHz to 16 kHz costs
about 5-10 microseconds, less than handing it to a thread, so it runs inline in the
session's message handler; the chunk size bound (`STT_MAX_CHUNK_BYTES`) caps the worst case.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode

Pcm16 = npt.NDArray[np.int16]

# Whisper and webrtcvad both work on 16 kHz mono; everything is converted to this on arrival.
SAMPLE_RATE_HZ = 16_000
BYTES_PER_SAMPLE = 2

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 192_000
MAX_CHANNELS = 8


def check_format(sample_rate_hz: int, channels: int) -> None:
    """Reject formats no real microphone sends before any audio is buffered."""
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise ProtocolError(
            f"sample_rate {sample_rate_hz} Hz is outside "
            f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz",
            code=ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(
            f"channels {channels} is outside 1-{MAX_CHANNELS}",
            code=ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
        )


class AudioNormalizer:
    """Streams one session's PCM16 into 16 kHz mono, keeping resampler state across chunks."""

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ, channels: int = 1) -> None:
        check_format(sample_rate_hz, channels)
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self._frame_bytes = 2 * channels
        # A stateful stream resampler: chunk borders leave no clicks or lost samples.
        self._resampler = (
            None
            if sample_rate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="int16")
        )

    def push(self, pcm: bytes) -> Pcm16:
        """Convert one chunk; raises `ProtocolError` for a byte count that splits a sample."""
        if len(pcm) % self._frame_bytes:
            raise ProtocolError(
                f"chunk has {len(pcm)} bytes, not a whole number of "
                f"{self.channels}-channel 16-bit samples",
                code=ErrorCode.INVALID_AUDIO,
            )
        samples = np.frombuffer(pcm, dtype="<i2")
        if self.channels > 1:
            samples = (
                samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32).astype(np.int16)
            )
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return samples.astype(np.int16, copy=False)

    def flush(self) -> Pcm16:
        """The resampler's delayed tail, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.int16)
        return self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)


def pcm16_to_float32(pieces: list[Pcm16] | tuple[Pcm16, ...]) -> npt.NDArray[np.float32]:
    """Concatenate int16 pieces into the float32 [-1, 1) array Whisper takes."""
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32) / 32768.0
