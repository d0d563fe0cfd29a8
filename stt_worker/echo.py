"""Echo cancellation: the assistant's own voice taken out of the microphone audio, so it
cannot barge in on itself. WebRTC's AEC3 (LiveKit's bindings, the `echo` extra) does the
work; this module only feeds it 10 ms frames of reference and microphone audio in step."""

from __future__ import annotations

import collections

import numpy as np

from stt_worker.audio import Pcm16
from stt_worker.config import SAMPLE_RATE_HZ
from stt_worker.errors import ProtocolError
from stt_worker.protocol import ErrorCode

FRAME_SAMPLES = SAMPLE_RATE_HZ // 100  # the processing module works on 10 ms frames
# Playback queued ahead of the microphone; beyond it the oldest is dropped (the publisher
# is sending far ahead of what is really playing, so it could not line up anyway).
MAX_REFERENCE_S = 2.0


class EchoCanceller:
    """One session's canceller. `playback` queues what the speaker plays; `process` takes
    its echo out of the same span of microphone audio (16 kHz mono PCM16 both)."""

    def __init__(self) -> None:
        try:
            from livekit import rtc
        except ImportError as exc:
            raise ProtocolError(
                "playback sent but echo cancellation is not installed on this worker "
                "(pip install 'stt-streaming[echo]'); the playback is ignored",
                code=ErrorCode.ECHO_CANCELLATION_UNAVAILABLE,
            ) from exc
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
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
        out = []
        for frame in frames:
            # In step: one reference frame per microphone frame, silence when none is due.
            reference = self._reference.popleft() if self._reference else self._silence
            self._apm.process_reverse_stream(self._frame(reference))
            mic = self._frame(frame)
            self._apm.process_stream(mic)  # in place
            out.append(np.frombuffer(bytes(mic.data), np.int16))
        return np.concatenate(out) if out else np.empty(0, np.int16)

    def flush(self) -> Pcm16:
        """The last microphone samples short of a frame, unprocessed."""
        tail, self._mic_tail = self._mic_tail, np.empty(0, np.int16)
        return tail

    def _frame(self, samples: Pcm16) -> object:
        return self._rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE_HZ, 1, FRAME_SAMPLES)


def _frames(tail: Pcm16, samples: Pcm16) -> tuple[list[Pcm16], Pcm16]:
    joined = np.concatenate([tail, samples]) if tail.size else samples
    whole = joined.size // FRAME_SAMPLES * FRAME_SAMPLES
    frames = [joined[i : i + FRAME_SAMPLES] for i in range(0, whole, FRAME_SAMPLES)]
    return frames, joined[whole:].copy()
