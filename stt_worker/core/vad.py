"""Voice activity detection: 16 kHz mono int16 in, 20 ms frames tagged speech/silence out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16

# webrtcvad accepts only 10, 20 or 30 ms frames of 16-bit mono PCM; 20 ms matches the
# usual publisher chunk, so most chunks are exactly one frame.
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
# webrtcvad's noise estimate starts unadapted: the first frames of a stream read as speech
# for any noise floor above digital silence (measured on white noise: 23% of streams at
# -72 dBFS and all from -60 dBFS, always within frames 0-4, never after), so every session
# of a real microphone opened an utterance of noise and cost a decode. Those frames are
# reported unvoiced; speech that starts in them is caught 100 ms later, and the pre-roll
# keeps its audio.
WARMUP_FRAMES = 5


@dataclass(frozen=True, slots=True)
class Frames:
    """Whole 20 ms frames: `samples` holds len(speech) * FRAME_SAMPLES samples."""

    samples: Pcm16
    speech: tuple[bool, ...]

    def frame(self, index: int) -> Pcm16:
        return self.samples[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]


class VoiceActivityDetector:
    """Cuts a sample stream into frames and classifies each; keeps the partial frame."""

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._carry: Pcm16 = np.zeros(0, dtype=np.int16)
        self._frames_seen = 0

    def push(self, samples: Pcm16) -> Frames:
        if self._carry.size:
            samples = np.concatenate([self._carry, samples])
        whole = samples.size - samples.size % FRAME_SAMPLES
        self._carry = samples[whole:].copy()
        framed = samples[:whole]
        data = framed.tobytes()
        step = FRAME_SAMPLES * 2
        speech = tuple(
            self._vad.is_speech(data[i : i + step], SAMPLE_RATE_HZ)
            for i in range(0, len(data), step)
        )
        if self._frames_seen < WARMUP_FRAMES:
            unadapted = min(len(speech), WARMUP_FRAMES - self._frames_seen)
            speech = (False,) * unadapted + speech[unadapted:]
        self._frames_seen += len(speech)
        return Frames(framed, speech)

    def flush(self) -> Frames:
        """Zero-pad the last partial frame so the stream's final samples are not lost."""
        if not self._carry.size:
            return Frames(np.zeros(0, dtype=np.int16), ())
        padded = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        padded[: self._carry.size] = self._carry
        self._carry = np.zeros(0, dtype=np.int16)
        return self.push(padded)
