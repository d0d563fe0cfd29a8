"""Uploaded audio to 16 kHz mono float32: `decode_upload`, bounded in decoded duration.

16-bit PCM WAV (what our clients send) takes a fast path; anything else goes through FFmpeg
(PyAV): MP3, FLAC, OGG/Opus, WebM, M4A, ... Compressed bytes do not bound decoded audio
(low-bitrate Opus holds hours in a few MB), so decoding stops as soon as it passes
`max_samples` and the answer is 413. It reads the upload from its (spooled) file, so the
compressed bytes are never all in memory at once. Blocking: run it off the event loop.
"""

from __future__ import annotations

import io
import logging
import os
import wave
from collections.abc import Iterator
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt
import soxr

from stt_worker.core.audio import SAMPLE_RATE_HZ, check_format
from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.engines.base import Audio
from stt_worker.whisper_server.responses import RequestError

logger = logging.getLogger(__name__)


def decode_upload(source: BinaryIO | bytes, max_samples: int) -> Audio:
    """Float32 16 kHz mono from an uploaded file, at most `max_samples` long."""
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    if not size:
        raise RequestError(
            400, "The uploaded file is empty.", param="file", code=ErrorCode.EMPTY_AUDIO
        )
    audio = _decode_wav_pcm16(file, max_samples)
    if audio is None:
        file.seek(0)
        audio = _decode_with_av(file, size, max_samples)
    if audio.size == 0:
        raise RequestError(
            400,
            "The uploaded file contains no audio samples.",
            param="file",
            code=ErrorCode.EMPTY_AUDIO,
        )
    return audio


def _too_long(max_samples: int) -> RequestError:
    return RequestError(
        413,
        f"The audio is longer than {max_samples / SAMPLE_RATE_HZ:g} s "
        "(WHISPER_SERVER_MAX_AUDIO_S); split it.",
        param="file",
        code=ErrorCode.AUDIO_TOO_LONG,
    )


def _decode_wav_pcm16(file: BinaryIO, max_samples: int) -> Audio | None:
    """The fast path for 16-bit PCM WAV; None for anything else."""
    header = file.read(12)
    file.seek(0)
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    try:
        with wave.open(file) as wav:
            if wav.getsampwidth() != 2:
                return None  # 8/24/32-bit and float WAV go through FFmpeg
            sample_rate_hz, channels = wav.getframerate(), wav.getnchannels()
            if sample_rate_hz and wav.getnframes() / sample_rate_hz * SAMPLE_RATE_HZ > max_samples:
                raise _too_long(max_samples)
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        return None  # e.g. WAVE_FORMAT_EXTENSIBLE, which `wave` rejects and FFmpeg reads
    try:
        check_format(sample_rate_hz, channels)
    except ProtocolError as exc:
        raise RequestError(
            400, f"Unsupported WAV: {exc}", param="file", code=ErrorCode.INVALID_AUDIO
        ) from exc
    # A truncated upload may end mid-frame; the whole frames before it are still good audio.
    usable = len(pcm) - len(pcm) % (2 * channels)
    samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if sample_rate_hz != SAMPLE_RATE_HZ and samples.size:
        samples = soxr.resample(samples, sample_rate_hz, SAMPLE_RATE_HZ)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_with_av(file: BinaryIO, size: int, max_samples: int) -> Audio:
    try:
        pieces = list(_decoded_pcm16(file, max_samples))
    except RequestError:
        raise
    # PyAV raises a zoo of types (InvalidDataError, IndexError for "no audio stream", ...)
    # for bad input; all of them mean "not audio we can read", mapped here in one place.
    except Exception as exc:
        logger.debug("undecodable upload of %d bytes: %r", size, exc)
        raise RequestError(
            400,
            f"Could not decode the audio file: {exc}",
            param="file",
            code=ErrorCode.INVALID_AUDIO,
        ) from exc
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32) / 32768.0


def _decoded_pcm16(file: BinaryIO, max_samples: int) -> Iterator[npt.NDArray[np.int16]]:
    """16 kHz mono int16 pieces of the first audio stream, stopping past `max_samples`."""
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)
    total = 0
    with av.open(file, mode="r", metadata_errors="ignore") as container:
        frames = container.decode(audio=0)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except av.error.InvalidDataError:
                continue  # a damaged packet; the rest of the file may be fine
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1)
                total += pcm.size
                if total > max_samples:
                    raise _too_long(max_samples)
                yield pcm
            if frame is None:
                return
