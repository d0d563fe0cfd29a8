"""Per-session state machine: VAD frames and control events in, actions out. No I/O.

A `Session` never awaits, never reads the clock (callers pass ``now``, wall-clock seconds)
and never touches NATS or a model. It segments speech into utterances, asks for partial and
final transcriptions (`Transcribe`), turns results into messages (`Publish`), detects
barge-in, and says when it is finished (`Close`). `runtime/worker.py` carries the actions out.

Whose turn it is, the session's life and each utterance's phase move only through
`phases.TRANSITIONS`, as in h11. The session's `Listener` (`listener.py`) hears: it cuts
frames into utterances, applies the endpoint and barge-in policies, and asks for
transcriptions. The session speaks: it publishes partials, finals and interrupts, keeps the
session's life and timeouts, and closes once every final is out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.errors import SttError
from stt_worker.core.finals import Finals
from stt_worker.core.jobs import Action, Close, Decoded, Job, JobKind, Publish, Speculated
from stt_worker.core.listener import BargeIn, Heard, Listener
from stt_worker.core.phases import Event, Phase, advance
from stt_worker.core.protocol import (
    CloseReason,
    Error,
    Interrupt,
    SessionClosed,
    SpeakerId,
    State,
    Transcription,
    Word,
)
from stt_worker.core.session_clock import SessionClock
from stt_worker.core.session_config import SessionConfig
from stt_worker.core.speculation import ReadyFinal, Speculation
from stt_worker.core.turn_events import Numbering, TurnEvents
from stt_worker.core.vad import FRAME_SAMPLES, Frames

__all__ = ["Session", "SessionConfig", "frames_of"]

logger = logging.getLogger(__name__)

_ENDING = {"idle": "session idle, evicting", "max_duration": "session too old, ending"}


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
        self.speaker_id = speaker_id
        self._listener = Listener(session_id, config, turn=Phase(state), language=language)
        self._life = Phase.OPEN
        self._close_reason: CloseReason | None = None
        self._numbering = Numbering()
        self._turns = TurnEvents(session_id, config, self._listener.segmenter, self._numbering)
        self._clock = SessionClock(
            config.idle_timeout_s, config.max_session_s, config.chunk_timeout_s, now
        )

    # ------------------------------------------------------------ events

    def update(
        self, *, now: float, state: State, speaker_id: SpeakerId, language: str | None
    ) -> list[Action]:
        """A repeated `start`: close the open utterance, then take the new parameters."""
        actions = self._carry_out(self._listener.finalize(now, "restart"), now)
        self.speaker_id = speaker_id
        self.language = language
        return actions + self.change_state(state, now=now)

    def audio(self, frames: Frames, *, now: float, partial_wait_s: float = 0.0) -> list[Action]:
        """Classified 20 ms frames of the stream, in order. `partial_wait_s`: how long
        partials wait for the engine now, which stretches their cadence."""
        self._clock.heard(now, audio=bool(frames.speech))
        actions: list[Action] = []
        for index, is_speech in enumerate(frames.speech):
            actions += self._turns.frame(is_speech, now, self.speaker_id)
            heard = self._listener.frame(frames.frame(index), is_speech, now)
            actions += self._carry_out(heard, now)
        return actions + self._listener.partial_due(partial_wait_s)

    def change_state(self, state: State, *, now: float) -> list[Action]:
        self._clock.heard(now)
        event = Event.TO_RESPONDING if state == "responding" else Event.TO_LISTENING
        actions: list[Action] = []
        if event is Event.TO_RESPONDING:
            # The pipeline decided the user's turn is over: settle it now.
            actions += self._carry_out(self._listener.finalize(now, "responding"), now)
        self._listener.change_turn(event)
        return actions

    def end(
        self, *, now: float, reason: CloseReason = "end", finalise: bool = True
    ) -> list[Action]:
        """Finalise what is open (unless a drain leaves it to a next owner that replays its
        audio: `finalise` false), then close once every final is published."""
        life = advance(self._life, Event.END)
        if life is self._life:
            return []  # ended already
        actions = self._carry_out(self._listener.finalize(now, reason), now) if finalise else []
        self._life, self._close_reason = life, reason
        return actions + self._maybe_close(now)

    def tick(self, *, now: float) -> list[Action]:
        """Timeouts: a publisher stops mid-utterance, goes away, or never ends its session."""
        if self._life is not Phase.OPEN:
            return []
        due = self._clock.due(now, in_utterance=self.in_utterance)
        if due is None:
            return []
        if due == "timeout":
            return self._carry_out(self._listener.finalize(now, "timeout"), now)
        logger.info(_ENDING[due], extra={"session_id": self.session_id})
        return self.end(now=now, reason=due)

    def result(
        self,
        job: Job,
        text: str,
        *,
        now: float,
        language: str | None,
        inference_s: float,
        end_prob: float | None = None,
        turn_prob: float | None = None,
        words: Sequence[Word] = (),
    ) -> list[Action]:
        """An engine result for `job`; stale partials are dropped here. `words`: the
        text's word times from the start of the job's audio (`word_timestamps`)."""
        decoded = Decoded(text, language, inference_s, words)
        if job.kind is JobKind.TURN_CHECK:
            checked = self._listener.turn_checked(job, text, end_prob, turn_prob)
            if checked is None:
                return []
            return self._final(checked.job, decoded, checked.promised, now)
        if job.kind is JobKind.BARGE_IN_PROBE:
            return self._carry_out(self._listener.probed(job, text, inference_s), now)
        if job.is_final:
            promised = self._listener.finals.returned(job.utterance_id)
            if promised is None:
                return []  # its turn check's text was published for it already
            return self._final(job, decoded, promised, now)
        if job.speculative and (late := _late_final(self._listener, job, text)):
            return [Speculated(late[0], True), *self._final(late[0], decoded, late[1], now)]
        eager = self._turns.answered(job, decoded, now, self.speaker_id) if job.speculative else []
        if job.speculative and not self.config.partials:
            return eager  # asked for its text as a final, not to be shown
        partial = self._listener.partial(job, text)
        if partial is None:
            return eager
        stable = partial.stable_chars
        return [*eager, self._transcription(job, partial.text, stable, now, language, inference_s)]

    def failed(self, job: Job, error: SttError, *, now: float) -> list[Action]:
        """The engine failed on `job`: the client hears about it, the session goes on."""
        if job.kind in (JobKind.BARGE_IN_PROBE, JobKind.TURN_CHECK):
            self._listener.aside_failed(job)
            return []
        if not job.is_final:
            return []  # a later partial or the final will cover the same audio
        if self._listener.finals.returned(job.utterance_id) is None:
            return []  # its turn check's text was published for it already
        message = f"utterance {job.utterance_id} ({job.audio_s:.2f} s) failed: {error.message}"
        error_message = self.error(error.code, message, now=now, utterance_id=job.utterance_id)
        start = round(job.audio_start_s * SAMPLE_RATE_HZ)
        return [Publish(error_message, start), *self._maybe_close(now)]

    def error(
        self, code: str, message: str, *, now: float, utterance_id: int | None = None
    ) -> Error:
        return Error(self.session_id, code, message, now, self.speaker_id, utterance_id)

    # ------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return "responding" if self._listener.turn is Phase.RESPONDING else "listening"

    @property
    def language(self) -> str | None:
        return self._listener.language

    @language.setter
    def language(self, language: str | None) -> None:
        self._listener.language = language

    @property
    def closing(self) -> CloseReason | None:
        """Why the session ends, once `end` (or a timeout) came."""
        return None if self._life is Phase.OPEN else self._close_reason

    @property
    def closed(self) -> bool:
        return self._life is Phase.CLOSED

    @property
    def finals(self) -> Finals:
        return self._listener.finals

    @property
    def in_utterance(self) -> bool:
        return self._listener.utterance is not None

    @property
    def samples_seen(self) -> int:
        """16 kHz samples of this session's audio taken so far."""
        return self._listener.segmenter.samples_seen

    @property
    def first_unsettled_sample(self) -> int:
        """Where the audio that may still reach a published result begins: the first sample
        of the oldest final not yet answered, of the open utterance, or of the pre-roll that
        may still open one. Audio before it is settled: its result (or no result, for
        silence) is final. Durable mode acknowledges audio up to here."""
        held = self._listener.finals.start_samples()
        return min([*held, self._listener.segmenter.first_held_sample])

    @property
    def buffered_samples(self) -> int:
        """16 kHz samples this session holds: the open utterance (at most
        `max_utterance_samples` before it is cut) and the pre-roll ring."""
        return self._listener.segmenter.buffered_samples

    # ------------------------------------------------------------ messages

    def _carry_out(self, heard: Sequence[Heard], now: float) -> list[Action]:
        actions: list[Action] = []
        for item in heard:
            if isinstance(item, BargeIn):
                actions.append(self._interrupt(item, now))
            elif isinstance(item, ReadyFinal):
                actions.append(Speculated(item.job))
                actions += self._final(item.job, item.decoded, item.promised, now)
            else:
                actions.append(item)
        return actions

    def _interrupt(self, barge_in: BargeIn, now: float) -> Publish:
        logger.info("barge-in detected", extra={"session_id": self.session_id})
        interrupt = Interrupt(
            self.session_id,
            now,
            self.speaker_id,
            utterance_id=barge_in.utterance_id,
            transcript=barge_in.transcript,
        )
        utterance = self._listener.utterance
        if utterance is None or utterance.utterance_id != barge_in.utterance_id:
            return Publish(interrupt)  # its utterance ended before a probe's words took the turn
        return Publish(interrupt, utterance.start_sample)

    def _final(self, job: Job, decoded: Decoded, promised: bool, now: float) -> list[Action]:
        """Publish `decoded` as the final of `job`'s utterance."""
        text = decoded.text
        if not text and not promised:
            # Nothing was said and no partial promised anything: publish nothing.
            return self._maybe_close(now)
        actions: list[Action] = []
        backchannel = False
        if job.kind is JobKind.CANDIDATE_FINAL:
            # Heard over the assistant and never confirmed: a late barge-in if it holds
            # real words and the assistant still talks, else a backchannel, published as
            # such (never dropped).
            if self._listener.final_takes_turn(text):
                if self._listener.turn is Phase.RESPONDING:
                    barge_in = self._listener.barge_in(job.utterance_id, text)
                    actions.append(self._interrupt(barge_in, now))
            else:
                backchannel = bool(text)
        final = self._transcription(
            job,
            text,
            len(text),
            now,
            decoded.language,
            decoded.inference_s,
            backchannel=backchannel,
            words=_in_session(decoded, job) if job.word_timestamps else msgspec.UNSET,
        )
        if not backchannel:
            self._listener.context.remember(text)
        return [*actions, final, *self._maybe_close(now)]

    def _maybe_close(self, now: float) -> list[Action]:
        reason = self.closing
        if reason is None or self._listener.finals.pending:
            return []
        life = advance(self._life, Event.FINALS_SETTLED)
        if life is self._life:
            return []  # closed already
        self._life = life
        utterances = self._listener.segmenter.utterances
        closed = SessionClosed(self.session_id, reason, now, self.speaker_id, utterances)
        return [Publish(closed), Close(reason)]

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
        words: list[Word] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Publish:
        message = Transcription(
            session_id=self.session_id,
            transcript=text,
            sequence=self._numbering.take(),
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
            words=words,
        )
        return Publish(message)


def _in_session(decoded: Decoded, job: Job) -> list[Word]:
    """The words' times moved from the job's audio to the session's, as `audio_start_s`."""
    if not decoded.text:
        return []  # the text was dropped (silence, a hallucination): so are its words
    offset = job.audio_start_s
    return [
        Word(
            word.word,
            round(offset + word.start_s, 3),
            round(offset + word.end_s, 3),
            None if word.probability is None else round(word.probability, 4),
        )
        for word in decoded.words
    ]


def frames_of(samples: Pcm16, speech: Sequence[bool]) -> Frames:
    """Build `Frames` from samples and per-frame flags (tests and replays)."""
    if samples.size != len(speech) * FRAME_SAMPLES:
        raise ValueError("samples must hold exactly len(speech) frames")
    return Frames(samples, tuple(speech))


def _late_final(listener: Listener, job: Job, text: str) -> tuple[Job, bool] | None:
    """`Speculation.late` for a speculation of the listener's session that answered now."""
    open_ = listener.utterance
    ended = open_ is None or open_.utterance_id != job.utterance_id
    return Speculation.late(listener.finals, job, text, ended)
