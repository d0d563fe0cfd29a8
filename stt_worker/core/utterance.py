"""An utterance being heard: its audio, counters and phase (`Utterance`), the pre-roll that
opens one (`PreRoll`), and the cut of one that grows past the length bound."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from stt_worker.core.audio import Pcm16
from stt_worker.core.phases import UNCONFIRMED, Event, Phase, advance
from stt_worker.core.streaming import LocalAgreement

CUT_SEARCH_FRAMES = 75  # look for a pause in the last 1.5 s before the length bound


@dataclass(slots=True)
class Utterance:
    """One stretch of speech, from its pre-roll to its end; audio in 20 ms frames."""

    utterance_id: int
    start_sample: int
    phase: Phase
    pcm: list[Pcm16] = field(default_factory=list)  # one 20 ms frame per item
    speech: list[bool] = field(default_factory=list)  # VAD flag of each frame
    samples: int = 0
    voiced_frames: int = 0
    silence_run: int = 0  # unvoiced frames since the last voiced one
    samples_at_last_partial: int = 0
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    published: str | None = None  # the last partial text sent for this utterance
    # Word mode: voiced frames when the last probe was sent, and that probe's last word.
    voiced_at_last_probe: int = 0
    last_probe_word: str | None = None
    # Adaptive endpoint: voiced frames when the last turn check was sent.
    voiced_at_check: int = 0

    def append(self, frame: Pcm16, is_speech: bool) -> None:
        self.pcm.append(frame)
        self.speech.append(is_speech)
        self.samples += frame.size
        if is_speech:
            self.voiced_frames += 1
            self.silence_run = 0
        else:
            self.silence_run += 1

    def move(self, event: Event) -> bool:
        """Take `event` (see `phases.TRANSITIONS`); True when the phase changed."""
        before = self.phase
        self.phase = advance(before, event)
        return self.phase is not before

    @property
    def unconfirmed(self) -> bool:
        """Heard over the assistant and not (yet) a barge-in."""
        return self.phase in UNCONFIRMED

    @property
    def promised(self) -> bool:
        """A partial went out: its final is published even when empty."""
        return self.published is not None

    def cut(self, tail_id: int) -> tuple[Utterance, Utterance]:
        """Split at the quietest point near the end, not mid-word: the head keeps this
        utterance's id, the tail (`tail_id`) takes the frames after it; none lost, none
        repeated."""
        at = _quietest_cut(self)
        phase = advance(self.phase, Event.CUT)
        head = Utterance(self.utterance_id, self.start_sample, phase, published=self.published)
        tail = Utterance(tail_id, self.start_sample, phase)
        for index, (frame, is_speech) in enumerate(zip(self.pcm, self.speech, strict=True)):
            (head if index < at else tail).append(frame, is_speech)
        tail.start_sample += head.samples
        return head, tail


def _quietest_cut(utterance: Utterance) -> int:
    """Index of the frame to start the next utterance at: the middle of the longest unvoiced
    run in the search window, else the frame with the least energy."""
    first = max(1, len(utterance.pcm) - CUT_SEARCH_FRAMES)
    best_start, best_length, run_start = 0, 0, None
    for index in range(first, len(utterance.pcm) + 1):
        unvoiced = index < len(utterance.pcm) and not utterance.speech[index]
        if unvoiced and run_start is None:
            run_start = index
        elif not unvoiced and run_start is not None:
            if index - run_start > best_length:
                best_start, best_length = run_start, index - run_start
            run_start = None
    if best_length:
        return best_start + best_length // 2
    energy = [
        float(np.mean(utterance.pcm[index].astype(np.float32) ** 2))
        for index in range(first, len(utterance.pcm))
    ]
    return first + int(np.argmin(energy))


class PreRoll:
    """The frames before an utterance: held so its first phoneme is kept, and watched for
    the onset of speech (`start_frames` voiced among the last `start_frames` + 2)."""

    def __init__(self, *, preroll_frames: int, start_frames: int) -> None:
        self._start_frames = start_frames
        # The onset window plus the pre-roll before it, so the first phoneme is kept.
        self._frames: collections.deque[tuple[Pcm16, bool]] = collections.deque(
            maxlen=preroll_frames + start_frames + 2
        )
        self._recent_speech: collections.deque[bool] = collections.deque(maxlen=start_frames + 2)

    def push(self, frame: Pcm16, is_speech: bool) -> bool:
        """Hold `frame`; True when speech has begun (the hysteresis is met)."""
        self._frames.append((frame, is_speech))
        self._recent_speech.append(is_speech)
        return sum(self._recent_speech) >= self._start_frames

    def take(self) -> list[tuple[Pcm16, bool]]:
        """The frames held, oldest first; the pre-roll starts over."""
        frames = list(self._frames)
        self._frames.clear()
        self._recent_speech.clear()
        return frames

    @property
    def samples(self) -> int:
        return sum(frame.size for frame, _ in self._frames)
