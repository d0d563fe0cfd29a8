"""Per-session state machine: VAD frames and control events in, actions out. No I/O.

A `Session` never awaits, never reads the clock (callers pass ``now``, wall-clock seconds)
and never touches NATS or a model. It segments speech into utterances, asks for partial and
final transcriptions (`Transcribe`), turns results into messages (`Publish`), detects
barge-in, and says when it is finished (`Close`). `worker.py` carries the actions out.

Conversation states and what moves between them live in `TRANSITIONS`, as in h11.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.errors import SttError
from stt_worker.core.jobs import Action, Close, Job, JobKind, Publish, Transcribe
from stt_worker.core.protocol import (
    CloseReason,
    EndReason,
    Error,
    Interrupt,
    SessionClosed,
    SpeakerId,
    State,
    Transcription,
)
from stt_worker.core.streaming import LocalAgreement
from stt_worker.core.turns import (
    Backchannels,
    Commands,
    more_words_than_said,
    turn_is_over,
    words_of,
)
from stt_worker.core.vad import FRAME_MS, FRAME_SAMPLES, Frames

logger = logging.getLogger(__name__)

PAUSE_FRAMES = 3  # 60 ms of unvoiced frames: the speaker paused


class Trigger(enum.Enum):
    TO_LISTENING = "state_change:listening"
    TO_RESPONDING = "state_change:responding"
    BARGE_IN = "barge_in"


# (state, trigger) -> next state; a pair that is absent leaves the state unchanged.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    ("listening", Trigger.TO_RESPONDING): "responding",
    ("responding", Trigger.TO_LISTENING): "listening",
    ("responding", Trigger.BARGE_IN): "listening",
}


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The knobs a session needs, in frames and samples (derived from `Settings`)."""

    enable_vad: bool = True
    enable_interrupt_detection: bool = True
    endpoint_silence_ms: int = 500
    partial_interval_ms: int = 1000
    speech_start_ms: int = 60
    preroll_ms: int = 300
    interrupt_min_speech_ms: int = 250
    max_utterance_samples: int = 30 * SAMPLE_RATE_HZ
    chunk_timeout_s: float = 2.0
    idle_timeout_s: float = 60.0
    max_session_s: float = 4 * 3600.0
    # Characters of recent final text passed to the model as context; 0 = none.
    context_chars: int = 0
    # Barge-in: False = on voice activity alone; True = only once a quick transcription of
    # the speech holds a word that is not a backchannel ("yeah", "mm-hmm").
    barge_in_words: bool = False
    backchannels: Backchannels = field(default_factory=Backchannels)
    # Word mode: phrases that interrupt as soon as a probe hears them ("stop", "wait").
    commands: Commands = field(default_factory=Commands)
    # Word mode: more voiced audio between two probes of the same speech.
    probe_step_ms: int = 150
    # Adaptive end of turn: after `endpoint_min_ms` of silence the speech so far is
    # transcribed at once; a finished sentence ends the turn there (with that text), one
    # ending mid-phrase ("... and", "um") waits `endpoint_max_ms`, else `endpoint_silence_ms`.
    adaptive_endpoint: bool = False
    endpoint_min_ms: int = 300
    endpoint_max_ms: int = 1000
    # The decoder's probability that the text ends at the pause (`Transcript.end_prob`):
    # at least `endpoint_finished_prob` ends the turn, below `endpoint_unfinished_prob` waits
    # `endpoint_max_ms`, in between the fixed endpoint decides.
    endpoint_finished_prob: float = 0.75
    endpoint_unfinished_prob: float = 0.5

    @property
    def endpoint_frames(self) -> int:
        return _frames(self.endpoint_silence_ms)

    @property
    def start_frames(self) -> int:
        return _frames(self.speech_start_ms)

    @property
    def preroll_frames(self) -> int:
        return self.preroll_ms // FRAME_MS

    @property
    def interrupt_frames(self) -> int:
        return _frames(self.interrupt_min_speech_ms)

    @property
    def endpoint_min_frames(self) -> int:
        return _frames(self.endpoint_min_ms)

    @property
    def endpoint_max_frames(self) -> int:
        return _frames(self.endpoint_max_ms)

    @property
    def probe_step_frames(self) -> int:
        return _frames(self.probe_step_ms)

    @property
    def partial_interval_samples(self) -> int:
        return self.partial_interval_ms * SAMPLE_RATE_HZ // 1000


def _frames(ms: int) -> int:
    """A duration setting in whole VAD frames, at least one."""
    return max(1, ms // FRAME_MS)


# ---------------------------------------------------------------- session


@dataclass(slots=True)
class _Utterance:
    utterance_id: int
    start_sample: int
    pcm: list[Pcm16] = field(default_factory=list)  # one 20 ms frame per item
    speech: list[bool] = field(default_factory=list)  # VAD flag of each frame
    samples: int = 0
    voiced_frames: int = 0
    silence_run: int = 0
    samples_at_last_partial: int = 0
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    published: str | None = None  # the last partial text sent for this utterance
    # Speech heard while the assistant talks, not yet confirmed as a barge-in.
    candidate: bool = False
    probing: bool = False  # word mode: a probe of this speech is out
    voiced_at_last_probe: int = 0
    reprobe: bool = False  # a pause began while a probe was out: probe again when it returns
    last_probe_word: str | None = None  # the previous probe's last word
    checking: bool = False  # adaptive endpoint: a turn check of this pause is out
    hold: bool = False  # adaptive endpoint: the words so far end mid-phrase: wait longer
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


class Session:
    """One live audio stream's state. Feed it events; carry out the actions it returns."""

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        *,
        now: float,
        state: State = "listening",
        speaker_id: SpeakerId = None,
        language: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.config = config
        self.state: State = state
        self.speaker_id = speaker_id
        self.language = language
        self.closing: CloseReason | None = None
        self.closed = False
        self._sequence = 0
        self._next_utterance_id = 1
        self._samples_seen = 0
        self._utterance: _Utterance | None = None
        # The onset window plus the pre-roll before it, so the first phoneme is kept.
        self._preroll: collections.deque[tuple[Pcm16, bool]] = collections.deque(
            maxlen=config.preroll_frames + config.start_frames + 2
        )
        # Finals asked for and not yet answered: utterance id -> its first sample.
        self._pending_finals: dict[int, int] = {}
        # Adaptive endpoint: finals whose speech a turn check still decoding covers (no
        # speech since it), and finals already published from such a check's text.
        self._covered_by_check: set[int] = set()
        self._superseded: set[int] = set()
        self._context = ""
        # Utterances with a partial out: their final is published even when empty.
        self._promised: set[int] = set()
        self._recent_speech: collections.deque[bool] = collections.deque(
            maxlen=config.start_frames + 2
        )
        self._opened_at = now
        self._last_audio_at = now
        self._last_activity_at = now

    # ------------------------------------------------------------ events

    def update(
        self, *, now: float, state: State, speaker_id: SpeakerId, language: str | None
    ) -> list[Action]:
        """A repeated `start`: close the open utterance, then take the new parameters."""
        actions = self._finalize(now, "restart")
        self.speaker_id = speaker_id
        self.language = language
        actions += self.change_state(state, now=now)
        return actions

    def audio(self, frames: Frames, *, now: float) -> list[Action]:
        """Classified 20 ms frames of the stream, in order."""
        self._last_audio_at = self._last_activity_at = now
        actions: list[Action] = []
        for index, is_speech in enumerate(frames.speech):
            actions += self._frame(frames.frame(index), is_speech, now)
        if self._utterance is not None and not self._utterance.candidate:
            actions += self._maybe_partial()
        return actions

    def change_state(self, state: State, *, now: float) -> list[Action]:
        self._last_activity_at = now
        trigger = Trigger.TO_RESPONDING if state == "responding" else Trigger.TO_LISTENING
        actions: list[Action] = []
        if trigger is Trigger.TO_RESPONDING and self._utterance is not None:
            # The pipeline decided the user's turn is over: settle it now.
            actions += self._finalize(now, "responding")
        if trigger is Trigger.TO_LISTENING and self._utterance is not None:
            # A not-yet-confirmed barge-in becomes ordinary user speech.
            self._utterance.candidate = False
        self.state = TRANSITIONS.get((self.state, trigger), self.state)
        return actions

    def end(self, *, now: float, reason: CloseReason = "end") -> list[Action]:
        """Flush: finalise what is open, then close once every final is published."""
        if self.closing is not None:
            return []
        actions = self._finalize(now, reason)
        self.closing = reason
        return actions + self._maybe_close(now)

    def tick(self, *, now: float) -> list[Action]:
        """Timeouts: a publisher that stops sending mid-utterance, goes away entirely, or
        never ends its session."""
        if self.closing is not None:
            return []
        if now - self._last_activity_at >= self.config.idle_timeout_s:
            logger.info("session idle, evicting", extra={"session_id": self.session_id})
            return self.end(now=now, reason="idle")
        if now - self._opened_at >= self.config.max_session_s:
            logger.info("session too old, ending", extra={"session_id": self.session_id})
            return self.end(now=now, reason="max_duration")
        if self._utterance is not None and now - self._last_audio_at >= self.config.chunk_timeout_s:
            return self._finalize(now, "timeout")
        return []

    def result(
        self,
        job: Job,
        text: str,
        *,
        now: float,
        language: str | None,
        inference_s: float,
        end_prob: float | None = None,
    ) -> list[Action]:
        """An engine result for `job`; stale partials are dropped here."""
        if job.kind is JobKind.TURN_CHECK:
            return self._turn_checked(job, text, now, language, inference_s, end_prob)
        if job.kind is JobKind.BARGE_IN_PROBE:
            return self._probed(job, text, now, inference_s)
        if job.is_final:
            if self._published_from_check(job.utterance_id):
                return []
            self._pending_finals.pop(job.utterance_id, None)
            promised = job.utterance_id in self._promised
            self._promised.discard(job.utterance_id)
            if not text and not promised:
                # Nothing was said and no partial promised anything: publish nothing.
                return self._maybe_close(now)
            actions: list[Action] = []
            backchannel = False
            if job.kind is JobKind.CANDIDATE_FINAL:
                # Heard over the assistant and never confirmed: a late barge-in if it holds
                # real words and the assistant still talks, else a backchannel, published
                # as such (never dropped).
                if self.config.backchannels.takes_turn(text):
                    if self.state == "responding":
                        actions += self._barge_in(job.utterance_id, now, text)
                else:
                    backchannel = bool(text)
            final = self._transcription(
                job, text, len(text), now, language, inference_s, backchannel=backchannel
            )
            if not backchannel:
                self._remember(text)
            return [*actions, final, *self._maybe_close(now)]
        utterance = self._utterance
        if utterance is None or utterance.utterance_id != job.utterance_id or not text:
            return []  # that utterance was finalised meanwhile, or nothing was heard yet
        partial = utterance.agreement.update(text)
        if partial.text == utterance.published:
            return []
        utterance.published = partial.text
        self._promised.add(job.utterance_id)
        return [
            self._transcription(job, partial.text, partial.stable_chars, now, language, inference_s)
        ]

    def _maybe_check_turn(self, utterance: _Utterance, now: float) -> list[Action]:
        if utterance.silence_run == 0:
            utterance.hold = False  # speech goes on: the next pause is judged afresh
        if utterance.silence_run != self.config.endpoint_min_frames or utterance.checking:
            return []
        utterance.checking = True
        utterance.voiced_at_check = utterance.voiced_frames
        job = dataclasses.replace(
            self._job(utterance),
            kind=JobKind.TURN_CHECK,
            ended_at=now,
            trailing_silence_s=utterance.silence_run * FRAME_MS / 1000,
        )
        return [Transcribe(job)]

    def _turn_checked(
        self,
        job: Job,
        text: str,
        now: float,
        language: str | None,
        inference_s: float,
        end_prob: float | None,
    ) -> list[Action]:
        utterance = self._utterance
        if utterance is None or utterance.utterance_id != job.utterance_id:
            if job.utterance_id not in self._covered_by_check:
                return []  # speech resumed, or `end` came: its final decides
            # The fixed endpoint came first (the check lost the race under load), with no
            # speech since the check: this text is that final's, and here sooner.
            self._covered_by_check.discard(job.utterance_id)
            final = self._final_of_check(job)
            actions = self.result(final, text, now=now, language=language, inference_s=inference_s)
            self._superseded.add(job.utterance_id)
            return actions
        utterance.checking = False
        if utterance.voiced_frames > utterance.voiced_at_check:
            return []  # speaking again since the check: not the end of the turn
        finished = turn_is_over(
            text,
            end_prob,
            finished_prob=self.config.endpoint_finished_prob,
            unfinished_prob=self.config.endpoint_unfinished_prob,
        )
        logger.debug(
            "turn check: %r, end probability %s: %s",
            text,
            end_prob,
            {True: "ends", False: "holds", None: "fixed endpoint"}[finished],
            extra={"session_id": self.session_id},
        )
        if finished is False:
            utterance.hold = True
            return []
        if not finished:
            return []  # cannot tell: the fixed endpoint decides
        # A finished sentence after a short pause: the turn ends here, with this very text
        # (the audio since the check is silence), so no second decode is waited for.
        self._utterance = None
        self._pending_finals[job.utterance_id] = utterance.start_sample
        final = self._final_of_check(job)
        return self.result(final, text, now=now, language=language, inference_s=inference_s)

    def _published_from_check(self, utterance_id: int) -> bool:
        """A final's decode came back: was its text published already, from the turn check
        of the same speech? Either way no check stands in for it any more."""
        self._covered_by_check.discard(utterance_id)
        if utterance_id not in self._superseded:
            return False
        self._superseded.discard(utterance_id)
        return True

    @staticmethod
    def _final_of_check(job: Job) -> Job:
        return dataclasses.replace(job, kind=JobKind.FINAL, end_reason="silence")

    def _probed(self, job: Job, text: str, now: float, inference_s: float) -> list[Action]:
        utterance = self._utterance
        if utterance is None or utterance.utterance_id != job.utterance_id:
            return []  # that speech ended meanwhile; its final decides
        utterance.probing = False
        if not (utterance.candidate and self.state == "responding"):
            return []
        if more_words_than_said(text, job.audio_s):
            logger.debug("probe of %.2f s heard %r: not said, ignored", job.audio_s, text)
            text = ""
        # Mid-speech, the last word may be cut ("Ri-" heard as "Run"): it counts once the
        # speech has paused after it, or once two probes in a row end with it.
        words = words_of(text)
        last_word = words[-1] if words else None
        whole = job.trailing_silence_s >= PROBE_PAUSE_FRAMES * FRAME_MS / 1000 or (
            last_word is not None and last_word == utterance.last_probe_word
        )
        utterance.last_probe_word = last_word
        logger.debug(
            "probe heard %r (last word whole: %s, %.0f ms of audio, %.0f ms inference)",
            text,
            whole,
            job.audio_s * 1000,
            inference_s * 1000,
            extra={"session_id": self.session_id},
        )
        if self.config.commands.said(text) or self.config.backchannels.takes_turn(
            text, last_word_whole=whole
        ):
            return self._barge_in(job.utterance_id, now, text)
        if utterance.reprobe or (utterance.silence_run >= PROBE_PAUSE_FRAMES and not whole):
            return self._probe(utterance)  # the pause that makes the last word whole
        return []

    def failed(self, job: Job, error: SttError, *, now: float) -> list[Action]:
        """The engine failed on `job`: the client hears about it, the session goes on."""
        if job.kind in (JobKind.BARGE_IN_PROBE, JobKind.TURN_CHECK):
            self._covered_by_check.discard(job.utterance_id)  # its final job goes on
            utterance = self._utterance
            if utterance is not None and utterance.utterance_id == job.utterance_id:
                utterance.probing = False  # the next step of speech asks again
                utterance.checking = False  # and the next pause is checked again
            return []
        if not job.is_final:
            return []  # a later partial or the final will cover the same audio
        if self._published_from_check(job.utterance_id):
            return []
        self._pending_finals.pop(job.utterance_id, None)
        self._promised.discard(job.utterance_id)
        message = f"utterance {job.utterance_id} ({job.audio_s:.2f} s) failed: {error.message}"
        error_message = self.error(error.code, message, now=now, utterance_id=job.utterance_id)
        return [Publish(error_message), *self._maybe_close(now)]

    def error(
        self, code: str, message: str, *, now: float, utterance_id: int | None = None
    ) -> Error:
        return Error(self.session_id, code, message, now, self.speaker_id, utterance_id)

    @property
    def pending_finals(self) -> int:
        return len(self._pending_finals)

    @property
    def in_utterance(self) -> bool:
        return self._utterance is not None

    @property
    def samples_seen(self) -> int:
        """16 kHz samples of this session's audio taken so far."""
        return self._samples_seen

    @property
    def first_unsettled_sample(self) -> int:
        """Where the audio that may still reach a published result begins: the first sample
        of the oldest final not yet answered, of the open utterance, or of the pre-roll that
        may still open one. Audio before it is settled: its result (or no result, for
        silence) is final. Durable mode acknowledges audio up to here."""
        held = list(self._pending_finals.values())
        if self._utterance is not None:
            held.append(self._utterance.start_sample)
        held.append(self._samples_seen - sum(frame.size for frame, _ in self._preroll))
        return min(held)

    @property
    def buffered_samples(self) -> int:
        """16 kHz samples this session holds: the open utterance (at most
        `max_utterance_samples` before it is cut) and the pre-roll ring."""
        held = sum(frame.size for frame, _ in self._preroll)
        return held + (self._utterance.samples if self._utterance is not None else 0)

    # ------------------------------------------------------------ internals

    def _frame(self, frame: Pcm16, is_speech: bool, now: float) -> list[Action]:
        start_sample = self._samples_seen
        self._samples_seen += frame.size
        if self.state == "responding" and not self.config.enable_interrupt_detection:
            return []  # the assistant is talking and barge-in is off: not the user's turn
        if not self.config.enable_vad:
            return self._frame_without_vad(frame, is_speech, start_sample, now)
        utterance = self._utterance
        if utterance is None:
            self._preroll.append((frame, is_speech))
            self._recent_speech.append(is_speech)
            # Hysteresis: onset needs start_frames voiced among the last start_frames + 2.
            if sum(self._recent_speech) >= self.config.start_frames:
                self._open_utterance(start_sample + frame.size)
            return []
        utterance.append(frame, is_speech)
        actions: list[Action] = []
        if utterance.candidate:
            if self.config.barge_in_words:
                actions += self._maybe_probe(utterance)
            elif utterance.voiced_frames >= self.config.interrupt_frames:
                actions += self._barge_in(utterance.utterance_id, now)
            elif utterance.silence_run >= self.config.endpoint_frames:
                # A short noise while the assistant talks: not an interruption.
                self._utterance = None
                return actions
        endpoint_frames = self.config.endpoint_frames
        if self.config.adaptive_endpoint and not utterance.candidate:
            actions += self._maybe_check_turn(utterance, now)
            if utterance.hold:
                endpoint_frames = self.config.endpoint_max_frames
        if utterance.silence_run >= endpoint_frames:
            actions += self._finalize(now, "silence")
        elif utterance.samples >= self.config.max_utterance_samples:
            actions += self._cut(utterance, now)
        return actions

    def _cut(self, utterance: _Utterance, now: float) -> list[Action]:
        """Long speech: end the utterance at its quietest point near the bound, not mid-word,
        and carry the frames after it into the next utterance (none lost, none repeated)."""
        at = _quietest_cut(utterance)
        head = _Utterance(utterance.utterance_id, utterance.start_sample)
        tail = _Utterance(self._take_utterance_id(), utterance.start_sample)
        for index, (frame, is_speech) in enumerate(
            zip(utterance.pcm, utterance.speech, strict=True)
        ):
            (head if index < at else tail).append(frame, is_speech)
        tail.start_sample += head.samples
        self._utterance = head
        actions = self._finalize(now, "size")
        self._utterance = tail
        return actions

    def _frame_without_vad(
        self, frame: Pcm16, is_speech: bool, start_sample: int, now: float
    ) -> list[Action]:
        # The seed's plain mode: everything is buffered; size, timeout or end close a segment.
        if self._utterance is None:
            self._utterance = _Utterance(self._take_utterance_id(), start_sample)
        self._utterance.append(frame, is_speech)
        if self._utterance.samples >= self.config.max_utterance_samples:
            return self._finalize(now, "size")
        return []

    def _open_utterance(self, end_sample: int, *, with_preroll: bool = True) -> None:
        frames = list(self._preroll) if with_preroll else []
        self._preroll.clear()
        self._recent_speech.clear()
        start_sample = end_sample - sum(frame.size for frame, _ in frames)
        utterance = _Utterance(self._take_utterance_id(), start_sample)
        for frame, is_speech in frames:
            utterance.append(frame, is_speech)
        utterance.silence_run = 0
        utterance.candidate = self.state == "responding"
        self._utterance = utterance

    def _barge_in(
        self, utterance_id: int, now: float, transcript: str | None = None
    ) -> list[Action]:
        if self._utterance is not None and self._utterance.utterance_id == utterance_id:
            self._utterance.candidate = False  # from here on it is the user's turn
        self.state = TRANSITIONS[(self.state, Trigger.BARGE_IN)]
        logger.info("barge-in detected", extra={"session_id": self.session_id})
        interrupt = Interrupt(
            self.session_id, now, self.speaker_id, utterance_id=utterance_id, transcript=transcript
        )
        return [Publish(interrupt)]

    def _maybe_probe(self, utterance: _Utterance) -> list[Action]:
        """Word mode: once enough speech is heard, after each further step of it, and when
        it pauses (its last word is then whole), ask for a quick transcription of it."""
        voiced = utterance.voiced_frames
        if voiced < self.config.interrupt_frames:
            return []
        pause_begins = utterance.silence_run == PROBE_PAUSE_FRAMES
        if utterance.probing:
            utterance.reprobe = utterance.reprobe or pause_begins
            return []
        stepped = (
            not utterance.voiced_at_last_probe
            or voiced - utterance.voiced_at_last_probe >= self.config.probe_step_frames
        )
        if not (stepped and utterance.silence_run == 0) and not pause_begins:
            return []
        return self._probe(utterance)

    def _probe(self, utterance: _Utterance) -> list[Action]:
        utterance.probing = True
        utterance.reprobe = False
        utterance.voiced_at_last_probe = utterance.voiced_frames
        job = dataclasses.replace(
            self._job(utterance),
            kind=JobKind.BARGE_IN_PROBE,
            trailing_silence_s=utterance.silence_run * FRAME_MS / 1000,
        )
        return [Transcribe(job)]

    def _maybe_partial(self) -> list[Action]:
        utterance = self._utterance
        assert utterance is not None
        if (
            utterance.samples - utterance.samples_at_last_partial
            < self.config.partial_interval_samples
        ):
            return []
        if self.config.enable_vad and utterance.silence_run >= PAUSE_FRAMES:
            # In a pause a partial adds no words, and if the pause becomes the endpoint the
            # final would wait behind it: ask again when speech resumes.
            return []
        if (
            utterance.samples + self.config.partial_interval_samples
            >= self.config.max_utterance_samples
        ):
            # The length cut comes before the next partial would: its final must not queue
            # behind a partial decode of audio it is about to cover anyway.
            return []
        utterance.samples_at_last_partial = utterance.samples
        return [Transcribe(self._job(utterance))]

    def _finalize(self, now: float, reason: EndReason) -> list[Action]:
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return []
        if utterance.candidate and not self.config.barge_in_words:
            return []  # voice mode: speech too short to interrupt was never the user's turn
        if utterance.voiced_frames == 0 and self.config.enable_vad:
            self._promised.discard(utterance.utterance_id)
            return []
        self._pending_finals[utterance.utterance_id] = utterance.start_sample
        covered = utterance.checking and utterance.voiced_frames == utterance.voiced_at_check
        if covered and reason == "silence":
            self._covered_by_check.add(utterance.utterance_id)
        job = self._job(utterance, end_reason=reason)
        if utterance.candidate:
            job = dataclasses.replace(job, kind=JobKind.CANDIDATE_FINAL)
        silence_s = utterance.silence_run * FRAME_MS / 1000 if self.config.enable_vad else 0.0
        return [Transcribe(dataclasses.replace(job, ended_at=now, trailing_silence_s=silence_s))]

    def _maybe_close(self, now: float) -> list[Action]:
        if self.closing is None or self._pending_finals or self.closed:
            return []
        self.closed = True
        closed = SessionClosed(
            self.session_id, self.closing, now, self.speaker_id, self._next_utterance_id - 1
        )
        return [Publish(closed), Close(self.closing)]

    def _job(self, utterance: _Utterance, *, end_reason: EndReason | None = None) -> Job:
        """A partial's job, or with `end_reason` the final's."""
        return Job(
            utterance_id=utterance.utterance_id,
            kind=JobKind.PARTIAL if end_reason is None else JobKind.FINAL,
            pcm=tuple(utterance.pcm),
            audio_start_s=utterance.start_sample / SAMPLE_RATE_HZ,
            audio_end_s=(utterance.start_sample + utterance.samples) / SAMPLE_RATE_HZ,
            has_voice_activity=utterance.voiced_frames > 0,
            language=self.language,
            prompt=self._context or None,
            end_reason=end_reason,
        )

    def _remember(self, text: str) -> None:
        if self.config.context_chars and text:
            # Whole words from the end, so the prompt never starts mid-word.
            context = f"{self._context} {text}".strip()
            while len(context) > self.config.context_chars and " " in context:
                context = context.split(" ", 1)[1]
            self._context = context[-self.config.context_chars :]

    def _take_utterance_id(self) -> int:
        utterance_id = self._next_utterance_id
        self._next_utterance_id += 1
        return utterance_id

    def _transcription(
        self,
        job: Job,
        text: str,
        stable_chars: int,
        now: float,
        language: str | None,
        inference_s: float,
        *,
        backchannel: bool = False,
    ) -> Publish:
        message = Transcription(
            session_id=self.session_id,
            transcript=text,
            sequence=self._sequence,
            is_partial=not job.is_final,
            is_final=job.is_final,
            timestamp=now,
            speaker_id=self.speaker_id,
            has_voice_activity=job.has_voice_activity,
            state=self.state,
            utterance_id=job.utterance_id,
            audio_start_s=round(job.audio_start_s, 3),
            audio_end_s=round(job.audio_end_s, 3),
            language=language,
            inference_ms=round(inference_s * 1000, 1),
            stable_chars=stable_chars,
            end_reason=job.end_reason,
            backchannel=backchannel,
        )
        self._sequence += 1
        return Publish(message)


# Word mode: a pause this long after a word means the word is whole (80 ms).
PROBE_PAUSE_FRAMES = 4

CUT_SEARCH_FRAMES = 75  # look for a pause in the last 1.5 s before the length bound


def _quietest_cut(utterance: _Utterance) -> int:
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


def frames_of(samples: Pcm16, speech: Sequence[bool]) -> Frames:
    """Build `Frames` from samples and per-frame flags (tests and replays)."""
    if samples.size != len(speech) * FRAME_SAMPLES:
        raise ValueError("samples must hold exactly len(speech) frames")
    return Frames(samples, tuple(speech))
