"""`Listener`: what a session hears, and whose turn it is. No I/O.

It takes the session's VAD-classified frames, cut into utterances by a `Segmenter`, and moves
each utterance through its phases (`phases.TRANSITIONS`) as the two policies name events:
the barge-in policy (`barge_in.py`) for speech heard over the assistant, the endpoint policy
(`endpoint.py`) for the end of the user's. Entering a phase asks for what it needs, as a
`Transcribe` action: a probe for `PROBING`, a turn check for `CHECKING`, a final for
`FINAL_OUT`; partials follow their cadence. Finals not yet answered are in `finals`.

Publishing is the `Session`'s: a barge-in comes back as `BargeIn`, a turn check whose text is
the final as `CheckedFinal`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from stt_worker.core.audio import Pcm16
from stt_worker.core.barge_in import WordBargeIn
from stt_worker.core.finals import Finals
from stt_worker.core.jobs import Job, JobKind, Transcribe
from stt_worker.core.phases import Event, Phase, advance
from stt_worker.core.prompt_context import PromptContext
from stt_worker.core.protocol import EndReason
from stt_worker.core.session_config import SessionConfig
from stt_worker.core.speculation import ReadyFinal, Speculation
from stt_worker.core.streaming import Partial, partial_text
from stt_worker.core.utterance import Segmenter, Utterance
from stt_worker.core.vad import FRAME_MS

logger = logging.getLogger(__name__)

PAUSE_FRAMES = 3  # 60 ms of unvoiced frames: the speaker paused

_VERDICTS = {
    Event.TURN_OVER: "ends",
    Event.TURN_HOLDS: "holds",
    Event.TURN_UNDECIDED: "fixed endpoint",
}


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Speech heard over the assistant took the turn: an `Interrupt` is due."""

    utterance_id: int
    transcript: str | None = None


@dataclass(frozen=True, slots=True)
class CheckedFinal:
    """A turn check's text is the final of `job`'s utterance; `promised`: a partial went
    out, so it is published even when empty."""

    job: Job
    promised: bool


Heard = Transcribe | BargeIn | ReadyFinal


class Listener:
    """One session's ear: feed it frames and the answers to its probes and turn checks."""

    def __init__(
        self, session_id: str, config: SessionConfig, *, turn: Phase, language: str | None
    ) -> None:
        self.session_id = session_id  # for the logs
        self.config = config
        self.turn = turn
        self.language = language
        self.finals = Finals()
        self._endpoint = config.endpoint_policy()
        self._barge_in = config.barge_in_policy()
        self._cadence = config.partial_cadence()
        self._speculation = Speculation(config.speculate_frames, config.endpoint_frames)
        self.segmenter = Segmenter(
            preroll_frames=config.preroll_frames, start_frames=config.start_frames
        )
        self.context = PromptContext(config.prompt, config.context_chars)

    @property
    def utterance(self) -> Utterance | None:
        """The open utterance, if any."""
        return self.segmenter.utterance

    # ------------------------------------------------------------ the turn

    def change_turn(self, event: Event) -> None:
        """The client's `state_change` (after the open utterance was settled for
        `TO_RESPONDING`): a candidate becomes ordinary user speech on `TO_LISTENING`."""
        if self.utterance is not None:
            self.utterance.move(event)
        self.turn = advance(self.turn, event)

    def barge_in(self, utterance_id: int, transcript: str | None = None) -> BargeIn:
        utterance = self._open(utterance_id)
        if utterance is not None:
            utterance.move(Event.BARGE_IN)  # from here on it is the user's turn
        self.turn = advance(self.turn, Event.BARGE_IN)
        return BargeIn(utterance_id, transcript)

    def final_takes_turn(self, text: str) -> bool:
        """An unconfirmed candidate's final: do its words take the turn?"""
        policy = self._barge_in
        assert isinstance(policy, WordBargeIn)  # only word mode transcribes candidates
        return policy.final_takes_turn(text)

    # ------------------------------------------------------------ frames

    def frame(self, frame: Pcm16, is_speech: bool, now: float) -> list[Heard]:
        """One classified 20 ms frame."""
        if self.turn is Phase.RESPONDING and self._barge_in is None:
            self.segmenter.skip(frame)  # barge-in is off: the assistant's time is not the user's
            return []
        if not self.config.enable_vad:
            # The seed's plain mode: everything is buffered; size, timeout or end close a segment.
            utterance = self.segmenter.buffer(frame, is_speech)
            too_long = utterance.samples >= self.config.max_utterance_samples
            return [*self.finalize(now, "size")] if too_long else []
        over_assistant = self.turn is Phase.RESPONDING
        onset = Event.SPEECH_BEGAN_OVER_ASSISTANT if over_assistant else Event.SPEECH_BEGAN
        utterance = self.segmenter.push(frame, is_speech, onset=onset)
        if utterance is None:
            return []
        heard: list[Heard] = []
        if utterance.unconfirmed:
            heard += self._heard_over_assistant(utterance)
            if utterance.phase is Phase.DONE:
                self.segmenter.take()  # a short noise while the assistant talks
                return heard
        event = self._endpoint.on_frame(utterance.silence_run, utterance.checked_at)
        if event is not None and utterance.move(event) and utterance.phase is Phase.CHECKING:
            heard.append(self._check_turn(utterance, now))
        if self._speculation.due(utterance):
            job = self._job(utterance, JobKind.PARTIAL, speculative=True)
            heard.append(Transcribe(self._speculation.padded(job, utterance)))
        if self._endpoint.ends(utterance.silence_run, utterance.phase):
            heard += self.finalize(now, "silence")
        elif utterance.samples >= self.config.max_utterance_samples:
            # Long speech: the head ends at its quietest point near the bound; the tail goes on.
            heard += self._end(self.segmenter.cut(), now, "size")
        return heard

    def partial_due(self, partial_wait_s: float = 0.0) -> list[Transcribe]:
        """After a chunk's frames: a partial of the open utterance, when one is due.
        `partial_wait_s`: how long partials wait for the engine now (it stretches the
        cadence)."""
        utterance = self.utterance
        if utterance is None or utterance.unconfirmed or not self.config.partials:
            return []
        if not self._cadence.due(
            voiced_frames=utterance.voiced_frames,
            samples=utterance.samples,
            samples_at_last_partial=utterance.samples_at_last_partial,
            wordless=utterance.wordless_partial,
            partial_wait_s=partial_wait_s,
        ):
            return []
        if self.config.enable_vad and utterance.silence_run >= PAUSE_FRAMES:
            # In a pause a partial adds no words, and if the pause becomes the endpoint the
            # final would wait behind it: ask again when speech resumes.
            return []
        if (
            utterance.samples + self._cadence.interval(partial_wait_s)
            >= self.config.max_utterance_samples
        ):
            # The length cut comes before the next partial would: its final must not queue
            # behind a partial decode of audio it is about to cover anyway.
            return []
        utterance.samples_at_last_partial = utterance.samples
        return [Transcribe(self._job(utterance, JobKind.PARTIAL))]

    def partial(self, job: Job, text: str) -> Partial | None:
        """A partial's text: what to publish, or None (stale, empty, or a repeat too soon)."""
        utterance = self._open(job.utterance_id)
        if utterance is None:
            return None  # that utterance was finalised meanwhile
        text = partial_text(text)
        utterance.wordless_partial = not text
        if not text:
            return None  # no word heard yet: the next partial comes sooner
        # Stable: agreed with a hypothesis at least an interval of audio earlier.
        apart_s = self.config.partial_interval_ms / 1000
        partial = utterance.agreement.update(text, at_s=job.audio_end_s, apart_s=apart_s)
        return partial if utterance.shows(partial, job.audio_end_s, apart_s / 2) else None

    # ------------------------------------------------------------ barge-in

    def _heard_over_assistant(self, utterance: Utterance) -> list[Heard]:
        policy = self._barge_in
        assert policy is not None  # candidates open only while barge-in is on
        event = policy.on_frame(
            voiced_frames=utterance.voiced_frames,
            silence_run=utterance.silence_run,
            voiced_at_last_probe=utterance.voiced_at_last_probe,
        )
        if event is Event.BARGE_IN:
            return [self.barge_in(utterance.utterance_id)]
        if event is not None and utterance.move(event) and utterance.phase is Phase.PROBING:
            return [self._probe(utterance)]
        return []

    def _probe(self, utterance: Utterance) -> Transcribe:
        utterance.voiced_at_last_probe = utterance.voiced_frames
        silence_s = utterance.silence_run * FRAME_MS / 1000
        job = self._job(utterance, JobKind.BARGE_IN_PROBE, trailing_silence_s=silence_s)
        return Transcribe(job)

    def probed(self, job: Job, text: str, inference_s: float) -> list[Heard]:
        """A probe's answer: a barge-in, another probe, or nothing."""
        utterance = self._open(job.utterance_id)
        if utterance is None:
            return []  # that speech ended meanwhile; its final decides
        if not (utterance.unconfirmed and self.turn is Phase.RESPONDING):
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
            return [self.barge_in(job.utterance_id, verdict.text)]
        if utterance.move(Event.PROBE_ANSWERED) and utterance.phase is Phase.PROBING:
            return [self._probe(utterance)]  # the pause that makes the last word whole
        return []

    def aside_failed(self, job: Job) -> None:
        """A probe or turn check failed: its final goes on alone; the next step of speech
        is probed, the next pause checked, afresh."""
        self.finals.aside_failed(job.utterance_id)
        utterance = self._open(job.utterance_id)
        if utterance is not None:
            utterance.move(Event.ASIDE_FAILED)

    # ------------------------------------------------------------ end of turn

    def _check_turn(self, utterance: Utterance, now: float) -> Transcribe:
        pause_s = utterance.ask_check(self._endpoint.check_point(utterance.silence_run))
        job = self._job(utterance, JobKind.TURN_CHECK, ended_at=now, trailing_silence_s=pause_s)
        return Transcribe(job)

    def turn_checked(
        self, job: Job, text: str, end_prob: float | None, turn_prob: float | None = None
    ) -> CheckedFinal | None:
        """A turn check's answer (its words, the decoder's end probability, Smart Turn's
        probability when it ran): the final, when its text is one."""
        final = CheckedFinal(
            dataclasses.replace(job, kind=JobKind.FINAL, end_reason="silence"), promised=False
        )
        utterance = self._open(job.utterance_id)
        if utterance is None:
            # Ended meanwhile. If the fixed endpoint ended it with no speech since the check
            # (the check lost the race under load), this text is that final's, and sooner;
            # a check with no words (or no decode: turn mode) leaves it to the final.
            promised = self.finals.check_won(job.utterance_id) if text else None
            if promised is None:
                return None  # speech resumed, or `end` came: its final decides
            return dataclasses.replace(final, promised=promised)
        if utterance.voiced_frames > utterance.voiced_at_check:
            utterance.move(Event.CHECK_MOOT)
            return None  # speaking again since the check: not the end of the turn
        verdict = self._endpoint.judge(text, end_prob, turn_prob, job.trailing_silence_s)
        logger.debug(
            "turn check: %r, end probability %s, turn probability %s: %s",
            text,
            end_prob,
            turn_prob,
            _VERDICTS[verdict],
            extra={"session_id": self.session_id},
        )
        utterance.move(verdict)
        if utterance.phase is not Phase.FINAL_OUT:
            return None  # mid-phrase: wait longer; or cannot tell: the fixed endpoint decides
        # A finished sentence after a short pause: the turn ends here, with this very text
        # (the audio since the check is silence), so no second decode is waited for.
        self.segmenter.take()
        return dataclasses.replace(final, promised=utterance.promised)

    def finalize(self, now: float, reason: EndReason) -> list[Transcribe | ReadyFinal]:
        """End the open utterance, if any: its final, unless it holds nothing to transcribe."""
        return self._end(self.segmenter.take(), now, reason)

    def _end(
        self, utterance: Utterance | None, now: float, reason: EndReason
    ) -> list[Transcribe | ReadyFinal]:
        if utterance is None:
            return []
        kind = JobKind.CANDIDATE_FINAL if utterance.unconfirmed else JobKind.FINAL
        ready = None if utterance.unconfirmed else utterance.ready_final
        utterance.move(self._ending(utterance, reason))
        if utterance.phase is Phase.DONE:
            return []
        silence_s = utterance.silence_run * FRAME_MS / 1000 if self.config.enable_vad else 0.0
        job = self._job(
            utterance, kind, end_reason=reason, ended_at=now, trailing_silence_s=silence_s
        )
        if ready is not None:
            # No speech since the speculation, so its text is this final's: no decode.
            return [ReadyFinal(job, ready, utterance.promised)]
        self.finals.ask(
            utterance.utterance_id,
            utterance.start_sample,
            promised=utterance.promised,
            phase=utterance.phase,
            racing=Speculation.racing(job, utterance),
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

    def _job(
        self,
        utterance: Utterance,
        kind: JobKind,
        *,
        end_reason: EndReason | None = None,
        ended_at: float | None = None,
        trailing_silence_s: float = 0.0,
        speculative: bool = False,
    ) -> Job:
        return utterance.job(
            kind,
            language=self.language,
            prompt=self.context.prompt,
            task=self.config.task,
            word_timestamps=self.config.word_timestamps,
            end_reason=end_reason,
            ended_at=ended_at,
            trailing_silence_s=trailing_silence_s,
            speech_heard=kind is JobKind.PARTIAL and self.config.vad_trusted,
            speculative=speculative,
        )

    def _open(self, utterance_id: int) -> Utterance | None:
        """The open utterance, if it is `utterance_id`."""
        return found if (found := self.utterance) and found.utterance_id == utterance_id else None
