"""Utterances: one being heard, with its audio, counters and phase (`Utterance`), and the
cutting of a session's frames into them (`Segmenter`): the pre-roll that opens one, and the
cut of one that outgrows the length bound."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.jobs import Decoded, Job, JobKind
from stt_worker.core.phases import UNCONFIRMED, Event, Phase, advance
from stt_worker.core.protocol import EndReason, Task
from stt_worker.core.streaming import LocalAgreement, Partial
from stt_worker.core.vad import FRAME_MS

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
    published_stable: int = 0  # and its `stable_chars`
    published_end_s: float = 0.0  # and the end of the audio it covered
    wordless_partial: bool = False  # the last partial answered had no word in it
    # Word mode: voiced frames when the last probe was sent, and that probe's last word.
    voiced_at_last_probe: int = 0
    last_probe_word: str | None = None
    # Adaptive endpoint: voiced frames when the last turn check was sent, and the point of
    # its pause (frames) it heard.
    voiced_at_check: int = 0
    check_point: int = 0
    # Speculation (`SessionConfig.speculate_ms`): the audio (samples) and voiced frames of
    # the last speculative partial asked for in a pause, and its text once it came back
    # with no speech since; then it is the final if the pause ends the utterance.
    speculated_samples: int = 0
    speculated_voiced: int = -1
    ready: Decoded | None = None

    @property
    def speculated_end_s(self) -> float:
        """Where the audio the last speculation heard ends, in seconds of the session."""
        return (self.start_sample + self.speculated_samples) / SAMPLE_RATE_HZ

    @property
    def speculating(self) -> bool:
        """A speculation was asked in this pause, no speech came since, and it has not
        answered with words: it may yet, after the utterance ended."""
        return self.ready is None and self.voiced_frames == self.speculated_voiced

    @property
    def ready_final(self) -> Decoded | None:
        """The speculation's text, while no speech came since it was asked for."""
        return self.ready if self.voiced_frames == self.speculated_voiced else None

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
    def checked_at(self) -> int:
        """The point of the current pause (frames) its last turn check heard; 0: none."""
        return self.check_point if self.voiced_at_check == self.voiced_frames else 0

    def ask_check(self, point: int) -> float:
        """A turn check of the pause up to `point` frames is sent: its pause in seconds."""
        self.voiced_at_check, self.check_point = self.voiced_frames, point
        return point * FRAME_MS / 1000

    @property
    def unconfirmed(self) -> bool:
        """Heard over the assistant and not (yet) a barge-in."""
        return self.phase in UNCONFIRMED

    @property
    def promised(self) -> bool:
        """A partial went out: its final is published even when empty."""
        return self.published is not None

    def shows(self, partial: Partial, audio_end_s: float, repeat_after_s: float) -> bool:
        """Whether `partial` (of the audio up to `audio_end_s`) goes out, noted as published
        if so: new text, more of it stable (the client may now act on those words), or the
        same words over at least `repeat_after_s` more audio. Partials are asked for about
        every 200 ms of speech; holding back one that repeats the last left the client
        without a word from the session for 400 ms, where it was promised one at least every
        interval while speech goes on: the repeat says the words still stand, more heard."""
        same = (partial.text, partial.stable_chars) == (self.published, self.published_stable)
        # Audio ends are sums of 20 ms frames: a step of exactly `repeat_after_s` may fall
        # a rounding error short of it.
        if same and audio_end_s - self.published_end_s + 1e-6 < repeat_after_s:
            return False
        self.published, self.published_stable = partial.text, partial.stable_chars
        self.published_end_s = audio_end_s
        return True

    def job(
        self,
        kind: JobKind,
        *,
        language: str | None,
        prompt: str | None,
        task: Task = "transcribe",
        word_timestamps: bool = False,
        end_reason: EndReason | None = None,
        ended_at: float | None = None,
        trailing_silence_s: float = 0.0,
        speech_heard: bool = False,
        speculative: bool = False,
    ) -> Job:
        """A transcription of the audio so far (or whole, for a final). A turn check's ends
        `trailing_silence_s` into the pause: a late one hears no more than an on-time one."""
        pcm, samples = tuple(self.pcm), self.samples
        unheard = self.silence_run - round(trailing_silence_s * 1000 / FRAME_MS)
        if kind is JobKind.TURN_CHECK and unheard > 0:
            samples -= sum(frame.size for frame in pcm[-unheard:])
            pcm = pcm[:-unheard]
        return Job(
            utterance_id=self.utterance_id,
            kind=kind,
            pcm=pcm,
            audio_start_s=self.start_sample / SAMPLE_RATE_HZ,
            audio_end_s=(self.start_sample + samples) / SAMPLE_RATE_HZ,
            has_voice_activity=self.voiced_frames > 0,
            language=language,
            prompt=prompt,
            task=task,
            word_timestamps=word_timestamps,
            end_reason=end_reason,
            ended_at=ended_at,
            trailing_silence_s=trailing_silence_s,
            speech_heard=speech_heard,
            first_words=kind is JobKind.PARTIAL and self.published is None,
            speculative=speculative,
        )

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


class Segmenter:
    """Cuts a session's frames into utterances, numbered from 1: the pre-roll before one and
    its onset, the open one, and the cut of one at the length bound. What a frame means for
    the open utterance's phase is up to its caller."""

    def __init__(self, *, preroll_frames: int, start_frames: int) -> None:
        self._preroll = PreRoll(preroll_frames=preroll_frames, start_frames=start_frames)
        self.utterance: Utterance | None = None
        self.samples_seen = 0
        self.utterances = 0  # begun so far

    def push(self, frame: Pcm16, is_speech: bool, *, onset: Event) -> Utterance | None:
        """Take a frame of VAD-classified audio: the open utterance it joined, else None,
        also for the frame that opens one (by `onset`): its phase moves from the next."""
        start_sample = self.samples_seen
        self.samples_seen += frame.size
        utterance = self.utterance
        if utterance is not None:
            utterance.append(frame, is_speech)
            return utterance
        if self._preroll.push(frame, is_speech):
            frames = self._preroll.take()
            end_sample = start_sample + frame.size
            utterance = self._begin(onset, end_sample - sum(f.size for f, _ in frames))
            for held, held_speech in frames:
                utterance.append(held, held_speech)
            utterance.silence_run = 0
        return None

    def buffer(self, frame: Pcm16, is_speech: bool) -> Utterance:
        """Without VAD: every frame joins the open utterance (one begins if none is open)."""
        utterance = self.utterance
        if utterance is None:
            utterance = self._begin(Event.SPEECH_BEGAN, self.samples_seen)
        self.samples_seen += frame.size
        utterance.append(frame, is_speech)
        return utterance

    def skip(self, frame: Pcm16) -> None:
        """A frame that is nobody's speech: counted, not kept."""
        self.samples_seen += frame.size

    def take(self) -> Utterance | None:
        """The open utterance, which ends here."""
        utterance, self.utterance = self.utterance, None
        return utterance

    def cut(self) -> Utterance:
        """Split the open utterance (see `Utterance.cut`): the head, which ends here; the
        tail goes on as the next utterance."""
        assert self.utterance is not None
        self.utterances += 1
        head, self.utterance = self.utterance.cut(self.utterances)
        return head

    def _begin(self, event: Event, start_sample: int) -> Utterance:
        self.utterances += 1
        self.utterance = Utterance(self.utterances, start_sample, advance(Phase.WAITING, event))
        return self.utterance

    @property
    def buffered_samples(self) -> int:
        """The open utterance's samples and the pre-roll's."""
        held = self._preroll.samples
        return held + (self.utterance.samples if self.utterance is not None else 0)

    @property
    def first_held_sample(self) -> int:
        """The first sample of the open utterance, else of the pre-roll (which is empty
        while an utterance is open)."""
        if self.utterance is not None:
            return self.utterance.start_sample
        return self.samples_seen - self._preroll.samples
