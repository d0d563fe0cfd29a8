"""Clips of a manifest, with the worker's VAD decision per frame."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stt_worker.core.audio import SAMPLE_RATE_HZ, pcm16_to_float32
from stt_worker.core.vad import FRAME_MS, DetectorFactory, label_stream
from stt_worker.evaluation.results import Clip
from stt_worker.runtime.publisher import WavFormatError, read_wav


def load_clips(
    manifest: Path,
    detector: DetectorFactory,
    *,
    files: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Clip]:
    """The manifest's clips (16 kHz mono PCM16): only `files` (in that order), the first `limit`."""
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if files is not None:
        by_file = {entry["file"]: entry for entry in entries}
        missing = [name for name in files if name not in by_file]
        if missing:
            raise FileNotFoundError(f"{manifest}: no entries for {', '.join(missing)}")
        entries = [by_file[name] for name in dict.fromkeys(files)]  # in the order asked
    if limit is not None:
        entries = entries[:limit]
    clips = []
    for entry in entries:
        path = manifest.parent / entry["file"]
        samples, sample_rate_hz = read_wav(path)
        if sample_rate_hz != SAMPLE_RATE_HZ or samples.shape[1] != 1:
            # Slices for the bare decodes and the VAD frame grid assume the worker's format.
            raise WavFormatError(
                f"{path}: evaluation needs 16 kHz mono, got {sample_rate_hz} Hz x "
                f"{samples.shape[1]} channels"
            )
        pcm = np.ascontiguousarray(samples[:, 0])
        # The same detector class and frame grid as the worker (publisher chunks start at 0).
        speech = label_stream(detector(), pcm)
        clips.append(Clip(entry["file"], path, entry["text"], pcm, speech))
    return clips


def audio_slice(clip: Clip, start_s: float, end_s: float) -> npt.NDArray[np.float32]:
    """The clip's samples over [start_s, end_s), zero-padded as the worker pads its last frame."""
    start, end = round(start_s * SAMPLE_RATE_HZ), round(end_s * SAMPLE_RATE_HZ)
    piece = clip.pcm[start:end]
    if piece.size < end - start:
        piece = np.concatenate([piece, np.zeros(end - start - piece.size, dtype=np.int16)])
    return pcm16_to_float32([piece])


def trailing_silence_frames(clip: Clip, start_s: float, end_s: float) -> int:
    first, last = round(start_s * 1000 / FRAME_MS), round(end_s * 1000 / FRAME_MS)
    count = 0
    for index in range(min(last, len(clip.speech)) - 1, first - 1, -1):
        if clip.speech[index]:
            break
        count += 1
    return count
