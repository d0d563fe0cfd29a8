"""Echo cancellation: the assistant's own voice taken out of the microphone audio, so it
cannot barge in on itself. WebRTC's AEC3 (the `pywebrtc-audio` bindings) does the work; this
module only keeps the reference (what the speaker played) in step with the microphone.

The canceller is a plain object with no loop or lock: the worker calls `process` from its DSP
thread, one session's calls in order (the bindings release the GIL while AEC3 runs)."""

from __future__ import annotations

import collections

import numpy as np

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode

FRAME_SAMPLES = SAMPLE_RATE_HZ // 100  # AEC3 works on 10 ms frames
# Playback queued ahead of the microphone; beyond it the oldest is dropped (the publisher
# is sending far ahead of what is really playing, so it could not line up anyway).
MAX_REFERENCE_S = 2.0


class EchoCanceller:
    """One session's canceller. `playback` queues what the speaker plays; `process` takes
    its echo out of the same span of microphone audio (16 kHz mono PCM16 both)."""

    def __init__(self) -> None:
        try:
            import pywebrtc_audio
        except ImportError as exc:
            raise ProtocolError(
                "playback sent but echo cancellation is not installed on this worker "
                "(pip install pywebrtc-audio); the playback is ignored",
                code=ErrorCode.ECHO_CANCELLATION_UNAVAILABLE,
            ) from exc
        # Delay 0: AEC3 finds the echo path's delay itself (80-250 ms in bench/turns.py).
        self._aec = pywebrtc_audio.EchoCanceller(SAMPLE_RATE_HZ, 1, 0)
        self._reference: collections.deque[Pcm16] = collections.deque(
            maxlen=int(MAX_REFERENCE_S * 100)
        )
        self._reference_tail = np.empty(0, np.int16)
        self._mic_tail = np.empty(0, np.int16)
        self._silence = np.zeros(FRAME_SAMPLES, np.int16)

    def playback(self, samples: Pcm16) -> None:
        frames, self._reference_tail = _frames(self._reference_tail, samples)
        self._reference.extend(frames)

    def process(self, samples: Pcm16) -> Pcm16:
        frames, self._mic_tail = _frames(self._mic_tail, samples)
        if not frames:
            return np.empty(0, np.int16)
        # In step: one reference frame per microphone frame, silence when none is due.
        reference = [
            self._reference.popleft() if self._reference else self._silence for _ in frames
        ]
        return self._aec.process(np.concatenate(frames), np.concatenate(reference))

    def flush(self) -> Pcm16:
        """The last microphone samples short of a frame, unprocessed."""
        tail, self._mic_tail = self._mic_tail, np.empty(0, np.int16)
        return tail


def _frames(tail: Pcm16, samples: Pcm16) -> tuple[list[Pcm16], Pcm16]:
    joined = np.concatenate([tail, samples]) if tail.size else samples
    whole = joined.size // FRAME_SAMPLES * FRAME_SAMPLES
    frames = [joined[i : i + FRAME_SAMPLES] for i in range(0, whole, FRAME_SAMPLES)]
    return frames, joined[whole:].copy()
