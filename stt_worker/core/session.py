"""Per-session state machine: VAD frames and control events in, actions out. No I/O.

A `Session` never awaits, never reads the clock (callers pass ``now``, wall-clock seconds)
and never touches NATS or a model. It segments speech into utterances, asks for partial and
final transcriptions (`Transcribe`), turns results into messages (`Publish`), detects
barge-in, and says when it is finished (`Close`). `runtime/worker.py` carries the actions out.

Whose turn it is, the session's life and each utterance's phase move only through
`phases.TRANSITIONS`, as in h11. The endpoint policy (`endpoint.py`) says when silence ends
the user's utterance, the barge-in policy (`barge_in.py`) when speech over the assistant
interrupts it; both name an event, the table gives the new phase, and this module does what
entering it means: a probe for `PROBING`, a turn check for `CHECKING`, a final for
`FINAL_OUT`. Finals not yet answered, and a turn check racing one, are in `finals.py`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.barge_in import WordBargeIn
from stt_worker.core.errors import SttError
from stt_worker.core.finals import Finals
from stt_worker.core.jobs import Action, Close, Job, JobKind, Publish, Transcribe
from stt_worker.core.phases import Event, Phase, advance
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
from stt_worker.core.session_config import SessionConfig
from stt_worker.core.utterance import PreRoll, Utterance
from stt_worker.core.vad import FRAME_MS, FRAME_SAMPLES, Frames

__all__ = ["Session", "SessionConfig", "frames_of"]

logger = logging.getLogger(__name__)

PAUSE_FRAMES = 3  # 60 ms of unvoiced frames: the speaker paused

_VERDICTS = {
    Event.TURN_OVER: "ends",
    Event.TURN_HOLDS: "holds",
    Event.TURN_UNDECIDED: "fixed endpoint",
}


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
        self.language = language
        self._turn = Phase(state)
        self._life = Phase.OPEN
        self._close_reason: CloseReason | None = None
        self._endpoint = config.endpoint_policy()
        self._barge_in = config.barge_in_policy()
        self._sequence = 0
        self._next_utterance_id = 1
        self._samples_seen = 0
        self._utterance: Utterance | None = None
        self._preroll = PreRoll(
            preroll_frames=config.preroll_frames, start_frames=config.start_frames
        )
        self._finals = Finals()
        self._context = ""
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
        if self._utterance is not None and not self._utterance.unconfirmed:
            actions += self._maybe_partial(self._utterance)
        return actions

    def change_state(self, state: State, *, now: float) -> list[Action]:
        self._last_activity_at = now
        event = Event.TO_RESPONDING if state == "responding" else Event.TO_LISTENING
        actions: list[Action] = []
        if event is Event.TO_RESPONDING:
            # The pipeline decided the user's turn is over: settle it now.
            actions += self._finalize(now, "responding")
        elif self._utterance is not None:
            # A not-yet-confirmed barge-in becomes ordinary user speech.
            self._utterance.move(event)
        self._turn = advance(self._turn, event)
        return actions

    def end(self, *, now: float, reason: CloseReason = "end") -> list[Action]:
        """Flush: finalise what is open, then close once every final is published."""
        life = advance(self._life, Event.END)
        if life is self._life:
            return []  # ended already
        actions = self._finalize(now, reason)
        self._life, self._close_reason = life, reason
        return actions + self._maybe_close(now)

    def tick(self, *, now: float) -> list[Action]:
        """Timeouts: a publisher that stops sending mid-utterance, goes away entirely, or
        never ends its session."""
        if self._life is not Phase.OPEN:
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
            promised = self._finals.returned(job.utterance_id)
            if promised is None:
                return []  # its turn check's text was published for it already
            return self._final(job, text, promised, now, language, inference_s)
        utterance = self._open(job.utterance_id)
        if utterance is None or not text:
            return []  # that utterance was finalised meanwhile, or nothing was heard yet
        partial = utterance.agreement.update(text)
        if partial.text == utterance.published:
            return []
        utterance.published = partial.text
        return [
            self._transcription(job, partial.text, partial.stable_chars, now, language, inference_s)
        ]

    def failed(self, job: Job, error: SttError, *, now: float) -> list[Action]:
        """The engine failed on `job`: the client hears about it, the session goes on."""
        if job.kind in (JobKind.BARGE_IN_PROBE, JobKind.TURN_CHECK):
            # Its final goes on alone; the next step of speech is probed, the next pause
            # checked, afresh.
            self._finals.aside_failed(job.utterance_id)
            utterance = self._open(job.utterance_id)
            if utterance is not None:
                utterance.move(Event.ASIDE_FAILED)
            return []
        if not job.is_final:
            return []  # a later partial or the final will cover the same audio
        if self._finals.returned(job.utterance_id) is None:
            return []  # its turn check's text was published for it already
        message = f"utterance {job.utterance_id} ({job.audio_s:.2f} s) failed: {error.message}"
        error_message = self.error(error.code, message, now=now, utterance_id=job.utterance_id)
        return [Publish(error_message), *self._maybe_close(now)]

    def error(
        self, code: str, message: str, *, now: float, utterance_id: int | None = None
    ) -> Error:
        return Error(self.session_id, code, message, now, self.speaker_id, utterance_id)

    # ------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return "responding" if self._turn is Phase.RESPONDING else "listening"

    @property
    def closing(self) -> CloseReason | None:
        """Why the session ends, once `end` (or a timeout) came."""
        return None if self._life is Phase.OPEN else self._close_reason

    @property
    def closed(self) -> bool:
        return self._life is Phase.CLOSED

    @property
    def pending_finals(self) -> int:
        return self._finals.pending

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
        held = self._finals.start_samples()
        if self._utterance is not None:
            held.append(self._utterance.start_sample)
        held.append(self._samples_seen - self._preroll.samples)
        return min(held)

    @property
    def buffered_samples(self) -> int:
        """16 kHz samples this session holds: the open utterance (at most
        `max_utterance_samples` before it is cut) and the pre-roll ring."""
        held = self._preroll.samples
        return held + (self._utterance.samples if self._utterance is not None else 0)

    # ------------------------------------------------------------ frames

    def _frame(self, frame: Pcm16, is_speech: bool, now: float) -> list[Action]:
        start_sample = self._samples_seen
        self._samples_seen += frame.size
        if self._turn is Phase.RESPONDING and self._barge_in is None:
            return []  # the assistant is talking and barge-in is off: not the user's turn
        if not self.config.enable_vad:
            return self._frame_without_vad(frame, is_speech, start_sample, now)
        utterance = self._utterance
        if utterance is None:
            if self._preroll.push(frame, is_speech):
                self._open_utterance(start_sample + frame.size)
            return []
        utterance.append(frame, is_speech)
        actions: list[Action] = []
        if utterance.unconfirmed:
            actions += self._heard_over_assistant(utterance, now)
            if utterance.phase is Phase.DONE:
                self._utterance = None  # a short noise while the assistant talks
                return actions
        event = self._endpoint.on_frame(utterance.silence_run)
        if event is not None and utterance.move(event) and utterance.phase is Phase.CHECKING:
            actions += self._check_turn(utterance, now)
        if self._endpoint.ends(utterance.silence_run, utterance.phase):
            actions += self._finalize(now, "silence")
        elif utterance.samples >= self.config.max_utterance_samples:
            actions += self._cut(utterance, now)
        return actions

    def _frame_without_vad(
        self, frame: Pcm16, is_speech: bool, start_sample: int, now: float
    ) -> list[Action]:
        # The seed's plain mode: everything is buffered; size, timeout or end close a segment.
        if self._utterance is None:
            self._utterance = self._begin(Event.SPEECH_BEGAN, start_sample)
        self._utterance.append(frame, is_speech)
        if self._utterance.samples >= self.config.max_utterance_samples:
            return self._finalize(now, "size")
        return []

    def _open_utterance(self, end_sample: int) -> None:
        frames = self._preroll.take()
        start_sample = end_sample - sum(frame.size for frame, _ in frames)
        over_assistant = self._turn is Phase.RESPONDING
        event = Event.SPEECH_BEGAN_OVER_ASSISTANT if over_assistant else Event.SPEECH_BEGAN
        utterance = self._begin(event, start_sample)
        for frame, is_speech in frames:
            utterance.append(frame, is_speech)
        utterance.silence_run = 0
        self._utterance = utterance

    def _begin(self, event: Event, start_sample: int) -> Utterance:
        phase = advance(Phase.WAITING, event)
        return Utterance(self._take_utterance_id(), start_sample, phase)

    def _cut(self, utterance: Utterance, now: float) -> list[Action]:
        """Long speech: end the utterance at its quietest point near the bound and carry the
        frames after it into the next utterance."""
        head, tail = utterance.cut(self._take_utterance_id())
        self._utterance = head
        actions = self._finalize(now, "size")
        self._utterance = tail
        return actions

    def _maybe_partial(self, utterance: Utterance) -> list[Action]:
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

    # ------------------------------------------------------------ barge-in

    def _heard_over_assistant(self, utterance: Utterance, now: float) -> list[Action]:
        policy = self._barge_in
        assert policy is not None  # candidates open only while barge-in is on
        event = policy.on_frame(
            voiced_frames=utterance.voiced_frames,
            silence_run=utterance.silence_run,
            voiced_at_last_probe=utterance.voiced_at_last_probe,
        )
        if event is Event.BARGE_IN:
            return self._interrupt(utterance.utterance_id, now)
        if event is not None and utterance.move(event) and utterance.phase is Phase.PROBING:
            return self._probe(utterance)
        return []

    def _probe(self, utterance: Utterance) -> list[Action]:
        utterance.voiced_at_last_probe = utterance.voiced_frames
        job = dataclasses.replace(
            self._job(utterance),
            kind=JobKind.BARGE_IN_PROBE,
            trailing_silence_s=utterance.silence_run * FRAME_MS / 1000,
        )
        return [Transcribe(job)]

    def _probed(self, job: Job, text: str, now: float, inference_s: float) -> list[Action]:
        utterance = self._open(job.utterance_id)
        if utterance is None:
            return []  # that speech ended meanwhile; its final decides
        if not (utterance.unconfirmed and self._turn is Phase.RESPONDING):
            utterance.move(Event.PROBE_MOOT)
            return []
        policy = self._barge_in
        assert isinstance(policy, WordBargeIn)  # only word mode probes
        verdict = policy.judge_probe(
            text,
            audio_s=job.audio_s,
            trailing_silence_s=job.trailing_silence_s,
            previous_last_word=utterance.last_probe_word,
        )
        if verdict.text != text:
            logger.debug("probe of %.2f s heard %r: not said, ignored", job.audio_s, text)
        utterance.last_probe_word = verdict.last_word
        logger.debug(
            "probe heard %r (last word whole: %s, %.0f ms of audio, %.0f ms inference)",
            verdict.text,
            verdict.whole,
            job.audio_s * 1000,
            inference_s * 1000,
            extra={"session_id": self.session_id},
        )
        if verdict.event is Event.BARGE_IN:
            return self._interrupt(job.utterance_id, now, verdict.text)
        if utterance.move(Event.PROBE_ANSWERED) and utterance.phase is Phase.PROBING:
            return self._probe(utterance)  # the pause that makes the last word whole
        return []

    def _interrupt(
        self, utterance_id: int, now: float, transcript: str | None = None
    ) -> list[Action]:
        utterance = self._open(utterance_id)
        if utterance is not None:
            utterance.move(Event.BARGE_IN)  # from here on it is the user's turn
        self._turn = advance(self._turn, Event.BARGE_IN)
        logger.info("barge-in detected", extra={"session_id": self.session_id})
        interrupt = Interrupt(
            self.session_id, now, self.speaker_id, utterance_id=utterance_id, transcript=transcript
        )
        return [Publish(interrupt)]

    # ------------------------------------------------------------ end of turn

    def _check_turn(self, utterance: Utterance, now: float) -> list[Action]:
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
        final = dataclasses.replace(job, kind=JobKind.FINAL, end_reason="silence")
        utterance = self._open(job.utterance_id)
        if utterance is None:
            # Ended meanwhile. If the fixed endpoint ended it with no speech since the check
            # (the check lost the race under load), this text is that final's, and sooner.
            promised = self._finals.check_won(job.utterance_id)
            if promised is None:
                return []  # speech resumed, or `end` came: its final decides
            return self._final(final, text, promised, now, language, inference_s)
        if utterance.voiced_frames > utterance.voiced_at_check:
            utterance.move(Event.CHECK_MOOT)
            return []  # speaking again since the check: not the end of the turn
        verdict = self._endpoint.judge(text, end_prob)
        logger.debug(
            "turn check: %r, end probability %s: %s",
            text,
            end_prob,
            _VERDICTS[verdict],
            extra={"session_id": self.session_id},
        )
        utterance.move(verdict)
        if utterance.phase is not Phase.FINAL_OUT:
            return []  # mid-phrase: wait longer; or cannot tell: the fixed endpoint decides
        # A finished sentence after a short pause: the turn ends here, with this very text
        # (the audio since the check is silence), so no second decode is waited for.
        self._utterance = None
        return self._final(final, text, utterance.promised, now, language, inference_s)

    def _finalize(self, now: float, reason: EndReason) -> list[Action]:
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return []
        kind = JobKind.CANDIDATE_FINAL if utterance.unconfirmed else JobKind.FINAL
        utterance.move(self._ending(utterance, reason))
        if utterance.phase is Phase.DONE:
            return []
        self._finals.ask(
            utterance.utterance_id,
            utterance.start_sample,
            promised=utterance.promised,
            phase=utterance.phase,
        )
        silence_s = utterance.silence_run * FRAME_MS / 1000 if self.config.enable_vad else 0.0
        job = dataclasses.replace(
            self._job(utterance, end_reason=reason),
            kind=kind,
            ended_at=now,
            trailing_silence_s=silence_s,
        )
        return [Transcribe(job)]

    def _ending(self, utterance: Utterance, reason: EndReason) -> Event:
        """How `utterance` ends, as an event of `phases.TRANSITIONS`."""
        if utterance.unconfirmed:
            assert self._barge_in is not None  # candidates open only while barge-in is on
            return self._barge_in.unconfirmed_end
        if utterance.voiced_frames == 0 and self.config.enable_vad:
            return Event.DROPPED  # nothing voiced: nothing to transcribe
        if reason == "silence" and utterance.voiced_frames == utterance.voiced_at_check:
            return Event.ENDED_IN_CHECKED_PAUSE
        return Event.ENDED

    # ------------------------------------------------------------ results

    def _final(
        self,
        job: Job,
        text: str,
        promised: bool,
        now: float,
        language: str | None,
        inference_s: float,
    ) -> list[Action]:
        """Publish `text` as the final of `job`'s utterance."""
        if not text and not promised:
            # Nothing was said and no partial promised anything: publish nothing.
            return self._maybe_close(now)
        actions: list[Action] = []
        backchannel = False
        if job.kind is JobKind.CANDIDATE_FINAL:
            # Heard over the assistant and never confirmed: a late barge-in if it holds
            # real words and the assistant still talks, else a backchannel, published as
            # such (never dropped).
            policy = self._barge_in
            assert isinstance(policy, WordBargeIn)  # only word mode transcribes candidates
            if policy.final_takes_turn(text):
                if self._turn is Phase.RESPONDING:
                    actions += self._interrupt(job.utterance_id, now, text)
            else:
                backchannel = bool(text)
        final = self._transcription(
            job, text, len(text), now, language, inference_s, backchannel=backchannel
        )
        if not backchannel:
            self._remember(text)
        return [*actions, final, *self._maybe_close(now)]

    def _maybe_close(self, now: float) -> list[Action]:
        reason = self.closing
        if reason is None or self._finals.pending:
            return []
        life = advance(self._life, Event.FINALS_SETTLED)
        if life is self._life:
            return []  # closed already
        self._life = life
        closed = SessionClosed(
            self.session_id, reason, now, self.speaker_id, self._next_utterance_id - 1
        )
        return [Publish(closed), Close(reason)]

    def _open(self, utterance_id: int) -> Utterance | None:
        """The open utterance, if it is `utterance_id`."""
        utterance = self._utterance
        return utterance if utterance and utterance.utterance_id == utterance_id else None

    def _job(self, utterance: Utterance, *, end_reason: EndReason | None = None) -> Job:
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


def frames_of(samples: Pcm16, speech: Sequence[bool]) -> Frames:
    """Build `Frames` from samples and per-frame flags (tests and replays)."""
    if samples.size != len(speech) * FRAME_SAMPLES:
        raise ValueError("samples must hold exactly len(speech) frames")
    return Frames(samples, tuple(speech))
