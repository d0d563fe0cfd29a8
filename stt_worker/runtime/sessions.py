"""The worker's sessions: the table of those open, and what a decoded client message does to
its session (opens it, updates it, feeds it audio).

A `Stream` is one session as the worker serves it: the sans-I/O `Session`, its audio
pipeline, its telemetry and its acknowledgements. `Sessions.route` applies one message and
returns the actions the session answered with, and `Stream.answer` hands it an engine's
outcome; the worker carries the actions out.
`session_config` maps the settings onto the `SessionConfig` every session shares.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from opentelemetry.context import Context

from stt_worker.config import Settings
from stt_worker.core.audio import check_format
from stt_worker.core.endpoint import TurnRule
from stt_worker.core.errors import OverloadedError, ProtocolError
from stt_worker.core.jobs import Action, Job, Publish
from stt_worker.core.options import Capabilities, session_options
from stt_worker.core.protocol import (
    Chunk,
    ClientMessage,
    End,
    ErrorCode,
    Playback,
    ServerMessage,
    SessionClosed,
    Start,
    State,
    StateChange,
    whisper_language,
)
from stt_worker.core.session import Session, SessionConfig
from stt_worker.core.turns import Backchannels, Commands
from stt_worker.engines.base import Transcript
from stt_worker.runtime.delivery import Delivery, SessionAcks
from stt_worker.runtime.observation import Observer, SessionObserver
from stt_worker.runtime.pipeline import AudioPipeline, checked_pcm, speech_detectors
from stt_worker.runtime.scheduler import InferenceScheduler, Outcome

logger = logging.getLogger(__name__)

# How long a session the worker ended on its own is remembered by its id (see `Ended`).
ENDED_KEPT_S = 30.0


def session_config(settings: Settings) -> SessionConfig:
    return SessionConfig(
        enable_vad=settings.enable_vad,
        vad_trusted=settings.enable_vad and settings.vad_engine == "silero",
        enable_interrupt_detection=settings.enable_interrupt_detection,
        endpoint_silence_ms=settings.endpoint_silence_ms,
        speculate_ms=settings.endpoint_speculate_ms,
        turn_events=settings.turn_events,
        partial_first_ms=settings.partial_first_ms,
        partial_interval_ms=settings.partial_interval_ms,
        partial_lead_ms=settings.partial_lead_ms,
        speech_start_ms=settings.speech_start_ms,
        preroll_ms=settings.preroll_ms,
        interrupt_min_speech_ms=settings.interrupt_min_speech_ms,
        max_utterance_samples=settings.max_utterance_samples,
        chunk_timeout_s=settings.chunk_timeout_s,
        idle_timeout_s=settings.session_idle_timeout_s,
        max_session_s=settings.max_session_s,
        context_chars=settings.context_chars,
        barge_in_words=settings.barge_in_mode == "words",
        backchannels=Backchannels(settings.backchannel_phrases),
        commands=Commands(settings.command_phrases),
        probe_step_ms=settings.barge_in_probe_ms,
        endpoint_mode=settings.endpoint_mode,
        endpoint_min_ms=settings.endpoint_min_silence_ms,
        endpoint_max_ms=settings.endpoint_max_silence_ms,
        endpoint_finished_prob=settings.endpoint_finished_prob,
        endpoint_unfinished_prob=settings.endpoint_unfinished_prob,
        turn_check_ms=settings.turn_check_ms,
        turn_recheck_ms=settings.turn_recheck_ms,
        turn_max_ms=settings.turn_max_ms,
        turn_rule=TurnRule(
            over_prob=settings.turn_over_prob,
            hold_prob=settings.turn_hold_prob,
            end_veto_prob=settings.turn_end_veto_prob,
            recheck_veto_prob=settings.turn_recheck_veto_prob,
            finished_prob=settings.endpoint_finished_prob,
            unfinished_prob=settings.endpoint_unfinished_prob,
        ),
    )


@dataclass(slots=True)
class Stream:
    """A live session with its audio pipeline, its telemetry and its acknowledgements."""

    key: int
    subject: str  # where its results go
    session: Session
    audio: AudioPipeline
    observer: SessionObserver
    acks: SessionAcks
    # Opened by audio after the worker ended the session on its own (`Ended`), before the
    # publisher heard of it: the `start` it sends next joins this session, not cuts it.
    reopened: bool = False

    @property
    def trace_id(self) -> str | None:
        return self.observer.trace_id

    async def hold(self, message: ClientMessage, msg: Msg, now: float) -> None:
        """Keep an accepted message until its results are out (durable mode)."""
        audio = self.audio
        await self.acks.hold(
            message, msg, sample_rate_hz=audio.sample_rate_hz, channels=audio.channels, now=now
        )

    def answer(self, job: Job, outcome: Outcome, now: float) -> list[Action]:
        """Hand the session what the engine made of `job`: a transcript or a failure."""
        if isinstance(outcome, Transcript):
            return self.session.result(
                job,
                outcome.text,
                now=now,
                language=outcome.language,
                inference_s=outcome.inference_s,
                end_prob=outcome.end_prob,
                turn_prob=outcome.turn_prob,
                words=outcome.words,
            )
        logger.error("transcription failed: %s", outcome.message, extra={"code": outcome.code})
        return self.session.failed(job, outcome, now=now)

    def speculated(self, job: Job, late: bool, scheduler: InferenceScheduler) -> None:
        """`job`'s final is its speculation's text. `late`: `job` was queued behind the
        speculation (whose result this is, delivered while it still holds its session's
        turn), so its decode is withdrawn unrun: a slot saved under load. Should it have
        started after all, its result is dropped when it comes (`Finals.returned`)."""
        self.observer.speculated(job, asked=late)
        if late and scheduler.withdraw(self.key, job):
            self.session.finals.withdrawn(job.utterance_id)
            self.observer.withdrawn()

    def stamp(self, message: ServerMessage, start_sample: int | None) -> ServerMessage | None:
        """`message` as published (`SessionAcks.stamp`; None: a replay's, not published), a
        `session_closed` with the last chunk taken."""
        if isinstance(message, SessionClosed):
            message = msgspec.structs.replace(message, last_seq=self.audio.last_seq)
        return self.acks.stamp(message, start_sample)

    def flush(self, now: float) -> list[Action]:
        """Push the resampler tail and the last partial frame into the session."""
        return [
            action
            for frames in self.audio.flush()
            for action in self.session.audio(frames, now=now)
        ]


@dataclass(slots=True, frozen=True)
class Ended:
    """A session the worker ended on its own (idle, age, drain): a chunk its publisher sent
    before it heard `session_closed` opens the next one with the same format and options, not
    the defaults (48 kHz audio taken as 16 kHz is speech three times too slow)."""

    start: Start
    config: SessionConfig
    at: float

    @classmethod
    def of(cls, stream: Stream, at: float) -> Ended:
        session, audio = stream.session, stream.audio
        start = Start(
            sample_rate=audio.sample_rate_hz,
            channels=audio.channels,
            state=session.state,
            speaker_id=session.speaker_id,
            language=session.language,
        )
        return cls(start, session.config, at)


class Sessions:
    """The open sessions, by session id and by key, and the routing of messages to them."""

    def __init__(
        self,
        settings: Settings,
        observer: Observer,
        delivery: Delivery,
        dsp: Executor,
        partial_wait_s: Callable[[], float],
        multilingual: bool | None = None,
    ) -> None:
        """`multilingual`: the finals' engine's (`Engine.multilingual`), which decides
        whether a session may ask to translate."""
        self._settings = settings
        self._capabilities = Capabilities(
            multilingual=multilingual, smart_turn=settings.endpoint_mode == "turn"
        )
        self._partial_wait_s = partial_wait_s  # the scheduler's: it stretches partial cadence
        self._config = session_config(settings)
        self._observer = observer
        self._delivery = delivery
        self._dsp = dsp
        self._detectors = speech_detectors(settings)
        self.live: dict[str, Stream] = {}  # session id -> stream still taking audio
        self.streams: dict[Hashable, Stream] = {}  # key -> stream, closing ones included
        self._ended: dict[str, Ended] = {}  # session id -> the last one ended, oldest first
        self._keys = itertools.count(1)

    async def route(
        self,
        session_id: str,
        stream: Stream | None,
        message: ClientMessage,
        now: float,
        parent: Context | None,
    ) -> tuple[Stream | None, list[Action]]:
        """Apply `message` to its session (`stream`, None when none is live), opening one
        where the message may; returns the session and the actions it answered with."""
        match message:
            case Start():
                self._ended.pop(session_id, None)  # the publisher says what it sends now
                return self._start(session_id, stream, message, now, parent)
            case Chunk():
                return await self._chunk(session_id, stream, message, now, parent)
            case Playback():
                return self._playback(session_id, stream, message, now, parent), []
            case StateChange(state=state):
                if stream is None:
                    return self._reopen(session_id, now, parent, "state_change", state), []
                return stream, stream.session.change_state(state, now=now)
            case End():
                self._ended.pop(session_id, None)  # chunks after `end` get the defaults
                if stream is None:
                    raise ProtocolError(
                        f"'end' for unknown session {session_id!r}", code=ErrorCode.UNKNOWN_SESSION
                    )
                return stream, stream.flush(now) + stream.session.end(now=now)
        raise AssertionError(f"unhandled message {message!r}")

    def unlist(self, stream: Stream) -> None:
        """The session is closing: a new ``start`` for its id may now open a fresh one."""
        session_id = stream.session.session_id
        if self.live.get(session_id) is not stream:
            return
        del self.live[session_id]
        if stream.session.closing not in (None, "end"):
            self._ended.pop(session_id, None)
            self._ended[session_id] = Ended.of(stream, time.time())
            while len(self._ended) > self._settings.max_sessions:
                del self._ended[next(iter(self._ended))]

    def remove(self, stream: Stream) -> None:
        """The session closed."""
        self.streams.pop(stream.key, None)
        self.unlist(stream)

    def picker(self, belongs: Callable[[SessionAcks], bool]) -> Callable[[str], bool]:
        """Which session ids `belongs` may pick: its live sessions, and those not opened yet
        (what waits in their inboxes may open one of them)."""

        def picks(session_id: str) -> bool:
            stream = self.live.get(session_id)
            return stream is None or belongs(stream.acks)

        return picks

    async def wait_closed(self, streams: list[Stream], within_s: float) -> None:
        """Until none of `streams` is open (a drain), or `within_s` has passed."""
        try:
            async with asyncio.timeout(within_s):
                while any(s.key in self.streams for s in streams):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            cut = self._settings.max_session_id_chars
            still = [s.session.session_id[:cut] for s in streams if s.key in self.streams]
            # Only the sessions this drain (or partition) ended: others are not late.
            extra = {"open_sessions": len(still), "sessions": ",".join(still[:10])}
            logger.error("drain timed out", extra=extra)

    def _start(
        self,
        session_id: str,
        stream: Stream | None,
        start: Start,
        now: float,
        parent: Context | None,
    ) -> tuple[Stream, list[Action]]:
        check_format(start.sample_rate, start.channels)
        if stream is None:
            return self._open_with_options(session_id, start, now, parent)
        joins, stream.reopened = stream.reopened, False
        logger.info("start joins the reopened session" if joins else "repeated start")
        stream.audio.last_seq = None  # the publisher may number its chunks from 1 again
        actions: list[Action] = []
        for frames in stream.audio.reformat(start.sample_rate, start.channels):
            actions += stream.session.audio(frames, now=now)
        session, language = stream.session, whisper_language(start.language)
        if not joins:
            return stream, actions + session.update(
                now=now, state=start.state, speaker_id=start.speaker_id, language=language
            )
        session.speaker_id, session.language = start.speaker_id, language  # its utterance goes on
        return stream, actions + session.change_state(start.state, now=now)

    async def _chunk(
        self,
        session_id: str,
        stream: Stream | None,
        chunk: Chunk,
        now: float,
        parent: Context | None,
    ) -> tuple[Stream, list[Action]]:
        pcm = checked_pcm(chunk, self._settings.max_chunk_bytes)
        self._observer.chunk_received(len(pcm))
        if stream is None:
            stream = self._reopen(session_id, now, parent, "chunk")
        stream.audio.check_order(chunk.seq)
        self._observer.audio_received(stream.audio.duration_s(pcm))
        frames = await stream.audio.frames(pcm)
        if stream.session.closing in ("idle", "max_duration"):
            # A tick ended the session while these frames were made (they arrived just past
            # its deadline): they open the next one, as the chunks after them will. (After a
            # drain or a partition's hand-over the next owner has them.)
            stream = self._open_as(session_id, Ended.of(stream, now), now, parent)
            stream.audio.last_seq = chunk.seq
        return stream, stream.session.audio(frames, now=now, partial_wait_s=self._partial_wait_s())

    def _playback(
        self,
        session_id: str,
        stream: Stream | None,
        playback: Playback,
        now: float,
        parent: Context | None,
    ) -> Stream:
        """The assistant's audio: the echo reference for this session's mic."""
        pcm = checked_pcm(playback, self._settings.max_chunk_bytes)
        if stream is None:
            stream = self._reopen(session_id, now, parent, "playback", "responding")
        stream.audio.playback(playback, pcm)
        return stream

    def _reopen(
        self,
        session_id: str,
        now: float,
        parent: Context | None,
        kind: str,
        state: State | None = None,
    ) -> Stream:
        """Open a session for a message that is not a `start`: like the one the worker ended
        on its own moments ago, else with the defaults."""
        ended = self._ended.get(session_id)
        if ended is None or now - ended.at > ENDED_KEPT_S:
            logger.info("%s without start: opening with defaults", kind)
            return self._open(session_id, Start(state=state or "listening"), now, parent)
        stream = self._open_as(session_id, ended, now, parent, state)  # may be refused
        del self._ended[session_id]
        return stream

    def _open_as(
        self,
        session_id: str,
        ended: Ended,
        now: float,
        parent: Context | None,
        state: State | None = None,
    ) -> Stream:
        logger.info("audio after the worker ended the session: opening it again as it was")
        start = ended.start if state is None else msgspec.structs.replace(ended.start, state=state)
        stream = self._open(session_id, start, now, parent, ended.config)
        stream.reopened = True
        return stream

    def _open_with_options(
        self, session_id: str, start: Start, now: float, parent: Context | None
    ) -> tuple[Stream, list[Action]]:
        """Open a session with `start`'s options; each refused one is logged and answered
        with an `invalid_field` error, and the session keeps the default for it."""
        config, refused = session_options(start, self._config, self._capabilities)
        stream = self._open(session_id, start, now, parent, config)
        errors: list[Action] = []
        for problem in refused:
            logger.warning(
                "start option refused: %s", problem.message, extra={"code": problem.code}
            )
            errors.append(Publish(stream.session.error(problem.code, problem.message, now=now)))
        return stream, errors

    def _open(
        self,
        session_id: str,
        start: Start,
        now: float,
        parent: Context | None,
        config: SessionConfig | None = None,
    ) -> Stream:
        settings = self._settings
        if len(self.live) >= settings.max_sessions:
            raise OverloadedError(
                f"{len(self.live)} sessions open (STT_MAX_SESSIONS); session refused",
                code=ErrorCode.TOO_MANY_SESSIONS,
            )
        session = Session(
            session_id,
            config or self._config,
            now=now,
            state=start.state,
            speaker_id=start.speaker_id,
            language=whisper_language(start.language) or settings.whisper_language,
        )
        audio = AudioPipeline(
            start.sample_rate,
            start.channels,
            detector=self._detectors,
            dsp=self._dsp,
        )
        stream = Stream(
            key=next(self._keys),
            subject=f"{settings.transcription_subject_prefix}.{session_id}",
            session=session,
            audio=audio,
            observer=self._observer.open_session(session, start, parent),
            acks=self._delivery.session_acks(),
        )
        self.live[session_id] = stream
        self.streams[stream.key] = stream
        logger.info("session opened", extra={"trace_id": stream.trace_id})
        return stream
