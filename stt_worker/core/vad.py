"""Voice activity detection: 16 kHz mono int16 in, 20 ms frames tagged speech/silence out.

`VoiceActivityDetector` cuts a session's samples into 20 ms frames and hands them to a
`SpeechDetector`, which labels them: `WebrtcDetector` here (webrtcvad), or Silero's model in
`stt_worker.engines.silero_vad`. A detector may hold frames back until it can judge them;
they come out, in order, on a later push or at flush.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import webrtcvad

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16

# webrtcvad accepts only 10, 20 or 30 ms frames of 16-bit mono PCM; 20 ms matches the
# usual publisher chunk, so most chunks are exactly one frame. Every detector labels frames
# on this grid: the session counts speech and silence in these frames.
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


class SpeechDetector(Protocol):
    """Labels one stream's whole 20 ms frames, in order; stateful, one per session."""

    # Cheap enough (a few microseconds a 20 ms chunk) to run on the event loop.
    inline: bool

    def label(self, frames: Pcm16) -> Sequence[bool]:
        """Labels for the oldest frames not yet labelled: those of `frames` (whole frames)
        and any held from earlier calls, as many as can be judged now."""
        ...

    def flush(self) -> Sequence[bool]:
        """Labels for every frame still held, judged on the audio there is."""
        ...


DetectorFactory = Callable[[], SpeechDetector]


class WebrtcDetector:
    """webrtcvad on each frame as it comes; nothing is held back."""

    inline = True

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._frames_seen = 0

    def label(self, frames: Pcm16) -> tuple[bool, ...]:
        data = frames.tobytes()
        step = FRAME_SAMPLES * 2
        speech = tuple(
            self._vad.is_speech(data[i : i + step], SAMPLE_RATE_HZ)
            for i in range(0, len(data), step)
        )
        if self._frames_seen < WARMUP_FRAMES:
            unadapted = min(len(speech), WARMUP_FRAMES - self._frames_seen)
            speech = (False,) * unadapted + speech[unadapted:]
        self._frames_seen += len(speech)
        return speech

    def flush(self) -> tuple[bool, ...]:
        return ()


class NoDetector:
    """`STT_ENABLE_VAD=false`: every frame unvoiced and no model run (the seed's plain mode
    buffers everything and ignores the labels)."""

    inline = True

    def label(self, frames: Pcm16) -> tuple[bool, ...]:
        return (False,) * (frames.size // FRAME_SAMPLES)

    def flush(self) -> tuple[bool, ...]:
        return ()


class Hysteresis:
    """Speech probabilities to speech/silence, the way Silero's own `VADIterator` does: speech
    starts at `threshold` and ends only below `threshold - 0.15`, so a probability that
    wavers around the threshold inside a word does not chop it into pieces."""

    GAP = 0.15

    def __init__(self, threshold: float) -> None:
        if not self.GAP < threshold <= 1.0:
            raise ValueError(f"speech threshold {threshold} is outside ({self.GAP}, 1]")
        self.threshold = threshold
        self.speaking = False

    def update(self, probability: float) -> bool:
        floor = self.threshold - self.GAP if self.speaking else self.threshold
        self.speaking = probability >= floor
        return self.speaking


class VoiceActivityDetector:
    """Cuts a sample stream into frames for its detector; keeps the partial frame and the
    frames the detector has not labelled yet."""

    def __init__(self, detector: SpeechDetector) -> None:
        self._detector = detector
        self._carry: Pcm16 = np.zeros(0, dtype=np.int16)
        self._held: Pcm16 = np.zeros(0, dtype=np.int16)  # whole frames awaiting labels

    @property
    def inline(self) -> bool:
        return self._detector.inline

    def push(self, samples: Pcm16) -> Frames:
        if self._carry.size:
            samples = np.concatenate([self._carry, samples])
        whole = samples.size - samples.size % FRAME_SAMPLES
        self._carry = samples[whole:].copy()
        framed = samples[:whole]
        return self._labelled(framed, self._detector.label(framed))

    def flush(self) -> Frames:
        """Zero-pad the last partial frame so the stream's final samples are not lost, and
        label every frame the detector still holds."""
        padded = np.zeros(0, dtype=np.int16)
        if self._carry.size:
            padded = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            padded[: self._carry.size] = self._carry
            self._carry = np.zeros(0, dtype=np.int16)
        speech = tuple(self._detector.label(padded)) + tuple(self._detector.flush())
        return self._labelled(padded, speech)

    def _labelled(self, framed: Pcm16, speech: Sequence[bool]) -> Frames:
        if self._held.size:
            framed = np.concatenate([self._held, framed])
        done = len(speech) * FRAME_SAMPLES
        self._held = framed[done:].copy()
        return Frames(framed[:done], tuple(speech))


def label_stream(detector: SpeechDetector, samples: Pcm16) -> tuple[bool, ...]:
    """Every frame's label for a whole stream, on the worker's grid (frames from sample 0)."""
    vad = VoiceActivityDetector(detector)
    return vad.push(samples).speech + vad.flush().speech
