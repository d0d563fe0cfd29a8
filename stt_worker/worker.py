"""The NATS worker: the only module that talks to NATS.

It decodes each message once, routes it to its session's audio pipeline and state machine
(`session.py`), and carries out the actions that come back: publish a message, queue a
transcription on the scheduler, close the session. A bad message costs its sender an
``error`` message and nothing else; the handler never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from stt_worker.audio import AudioNormalizer, check_format
from stt_worker.config import Settings
from stt_worker.engines.base import DecodeOptions, Engine, Transcript
from stt_worker.errors import OverloadedError, ProtocolError, SttError
from stt_worker.protocol import (
    Chunk,
    ClientMessage,
    End,
    Error,
    ErrorCode,
    ServerMessage,
    Start,
    StateChange,
    chunk_pcm_bytes,
    decode_client_message,
    encode_server_message,
)
from stt_worker.scheduler import InferenceScheduler, Outcome
from stt_worker.session import (
    Action,
    Close,
    Job,
    Publish,
    Session,
    SessionConfig,
    Transcribe,
)
from stt_worker.vad import VoiceActivityDetector

logger = logging.getLogger(__name__)

TICK_S = 0.1


def session_config(settings: Settings) -> SessionConfig:
    return SessionConfig(
        enable_vad=settings.enable_vad,
        enable_interrupt_detection=settings.enable_interrupt_detection,
        endpoint_silence_ms=settings.endpoint_silence_ms,
        partial_interval_ms=settings.partial_interval_ms,
        speech_start_ms=settings.speech_start_ms,
        preroll_ms=settings.preroll_ms,
        interrupt_min_speech_ms=settings.interrupt_min_speech_ms,
        max_utterance_samples=settings.max_utterance_samples,
        chunk_timeout_s=settings.chunk_timeout_s,
        idle_timeout_s=settings.session_idle_timeout_s,
        context_chars=settings.context_chars,
    )


@dataclass(slots=True)
class _Stream:
    """A live session with its audio pipeline: state machine, resampler, VAD."""

    key: int
    subject: str
    session: Session
    normalizer: AudioNormalizer
    vad: VoiceActivityDetector
    last_seq: int | None = None

    def feed(self, pcm: bytes, now: float) -> list[Action]:
        frames = self.vad.push(self.normalizer.push(pcm))
        return self.session.audio(frames, now=now)

    def flush_audio(self, now: float) -> list[Action]:
        """Push the resampler tail and the last partial frame into the session."""
        frames = self.vad.push(self.normalizer.flush())
        actions = self.session.audio(frames, now=now)
        return actions + self.session.audio(self.vad.flush(), now=now)


class Worker:
    """Serves `ai.voice.stream.*` until stopped, then drains."""

    def __init__(
        self, settings: Settings, engine: Engine, partial_engine: Engine | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.partial_engine = partial_engine
        self.ready = asyncio.Event()
        self._config = session_config(settings)
        self._prefix = settings.stream_subject.rsplit(".", 1)[0] + "."
        self._live: dict[str, _Stream] = {}  # session id -> stream still taking audio
        self._streams: dict[Hashable, _Stream] = {}  # key -> stream, closing ones included
        self._keys = itertools.count(1)
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._scheduler = InferenceScheduler(
            engine,
            self._on_outcome,
            concurrency=engine.parallelism,
            max_pending_finals=settings.max_pending_finals,
            partial_engine=partial_engine,
        )
        self._nc: Client | None = None
        self._closing = False

    @property
    def session_count(self) -> int:
        return len(self._live)

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        if stop is None:  # run as the program: SIGTERM and Ctrl-C start the drain
            stop = asyncio.Event()
            _install_signal_handlers(stop)
        self._nc = await nats.connect(
            self.settings.nats_url,
            name="stt-streaming",
            max_reconnect_attempts=-1,  # a worker waits for its bus forever
            reconnect_time_wait=0.5,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        await self.engine.warmup()
        if self.partial_engine is not None:
            await self.partial_engine.warmup()
        sub = await self._nc.subscribe(
            self.settings.stream_subject,
            cb=self._on_message,
            pending_msgs_limit=self.settings.pending_msgs_limit,
            pending_bytes_limit=self.settings.pending_msgs_limit * 4096,
        )
        logger.info(
            "worker ready",
            extra={"subject": self.settings.stream_subject, "engine": self.engine.info.name},
        )
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            scheduler = group.create_task(self._scheduler.run(), name="scheduler")
            ticker = group.create_task(self._tick_forever(), name="ticker")
            await stop.wait()
            await self._drain(sub)
            scheduler.cancel()
            ticker.cancel()
        self._closing = True
        await self._nc.drain()  # flushes every publish, then closes

    async def _drain(self, sub: Subscription) -> None:
        """SIGTERM: take no new audio, finish what was accepted, publish every final."""
        self.ready.clear()
        logger.info("draining", extra={"sessions": len(self._live)})
        try:
            await sub.drain()  # handles the messages already received, then unsubscribes
        except nats.errors.Error as exc:  # e.g. the connection is already closed
            logger.warning("could not drain the subscription: %r", exc)
        now = time.time()
        for stream in list(self._live.values()):
            await self._apply(
                stream, stream.flush_audio(now) + stream.session.end(now=now, reason="shutdown")
            )
        try:
            await asyncio.wait_for(self._all_closed.wait(), self.settings.drain_timeout_s)
        except TimeoutError:
            logger.error("drain timed out", extra={"open_sessions": len(self._streams)})

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            for stream in list(self._streams.values()):
                await self._apply(stream, stream.session.tick(now=now))

    # ------------------------------------------------------------ input

    async def _on_message(self, msg: Msg) -> None:
        session_id = msg.subject[len(self._prefix) :]
        now = time.time()
        stream = self._live.get(session_id)
        try:
            message = decode_client_message(msg.data)
            stream, actions = self._dispatch(session_id, stream, message, now)
        except SttError as exc:
            await self._reject(session_id, stream, exc, now)
            return
        except Exception as exc:
            logger.exception(
                "unexpected failure handling a message", extra={"session_id": session_id}
            )
            await self._reject(session_id, stream, SttError(f"internal error: {exc!r}"), now)
            return
        if stream is not None:
            await self._apply(stream, actions)

    def _dispatch(
        self, session_id: str, stream: _Stream | None, message: ClientMessage, now: float
    ) -> tuple[_Stream | None, list[Action]]:
        match message:
            case Start():
                return self._start(session_id, stream, message, now)
            case Chunk():
                return self._chunk(session_id, stream, message, now)
            case StateChange(state=state):
                if stream is None:
                    logger.info("state_change opened a session", extra={"session_id": session_id})
                    stream = self._open(session_id, Start(state=state), now)
                    return stream, []
                return stream, stream.session.change_state(state, now=now)
            case End():
                if stream is None:
                    raise ProtocolError(
                        f"'end' for unknown session {session_id!r}", code=ErrorCode.UNKNOWN_SESSION
                    )
                return stream, stream.flush_audio(now) + stream.session.end(now=now)
        raise AssertionError(f"unhandled message {message!r}")

    def _start(
        self, session_id: str, stream: _Stream | None, start: Start, now: float
    ) -> tuple[_Stream, list[Action]]:
        check_format(start.sample_rate, start.channels)
        if stream is None:
            return self._open(session_id, start, now), []
        logger.info("repeated start updates the session", extra={"session_id": session_id})
        actions: list[Action] = []
        if (start.sample_rate, start.channels) != (
            stream.normalizer.sample_rate_hz,
            stream.normalizer.channels,
        ):
            actions += stream.flush_audio(now)
            stream.normalizer = AudioNormalizer(start.sample_rate, start.channels)
        actions += stream.session.update(
            now=now, state=start.state, speaker_id=start.speaker_id, language=start.language
        )
        return stream, actions

    def _chunk(
        self, session_id: str, stream: _Stream | None, chunk: Chunk, now: float
    ) -> tuple[_Stream, list[Action]]:
        if stream is None:
            logger.info(
                "chunk without start: opening with defaults", extra={"session_id": session_id}
            )
            stream = self._open(session_id, Start(), now)
        pcm = chunk_pcm_bytes(chunk)
        if len(pcm) > self.settings.max_chunk_bytes:
            raise ProtocolError(
                f"chunk of {len(pcm)} bytes exceeds STT_MAX_CHUNK_BYTES="
                f"{self.settings.max_chunk_bytes}; split it into smaller chunks",
                code=ErrorCode.CHUNK_TOO_LARGE,
            )
        if chunk.seq is not None:
            if stream.last_seq is not None and chunk.seq <= stream.last_seq:
                raise ProtocolError(
                    f"chunk seq {chunk.seq} after seq {stream.last_seq}: repeated or late, "
                    "not used",
                    code=ErrorCode.CHUNK_OUT_OF_ORDER,
                )
            stream.last_seq = chunk.seq
        return stream, stream.feed(pcm, now)

    def _open(self, session_id: str, start: Start, now: float) -> _Stream:
        if len(self._live) >= self.settings.max_sessions:
            raise OverloadedError(
                f"{len(self._live)} sessions open (STT_MAX_SESSIONS); session refused",
                code=ErrorCode.TOO_MANY_SESSIONS,
            )
        session = Session(
            session_id,
            self._config,
            now=now,
            state=start.state,
            speaker_id=start.speaker_id,
            language=start.language or self.settings.whisper_language,
        )
        stream = _Stream(
            key=next(self._keys),
            subject=f"{self.settings.transcription_subject_prefix}.{session_id}",
            session=session,
            normalizer=AudioNormalizer(start.sample_rate, start.channels),
            vad=VoiceActivityDetector(self.settings.vad_aggressiveness),
        )
        self._live[session_id] = stream
        self._streams[stream.key] = stream
        self._all_closed.clear()
        logger.info("session opened", extra={"session_id": session_id})
        return stream

    async def _reject(
        self, session_id: str, stream: _Stream | None, exc: SttError, now: float
    ) -> None:
        logger.warning(
            "rejected message: %s", exc.message, extra={"session_id": session_id, "code": exc.code}
        )
        speaker = stream.session.speaker_id if stream else None
        error = Error(session_id, exc.code, exc.message, now, speaker)
        await self._publish(f"{self.settings.transcription_subject_prefix}.{session_id}", error)

    # ------------------------------------------------------------ actions

    async def _apply(self, stream: _Stream, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case Publish(message=message):
                    await self._publish(stream.subject, message)
                case Transcribe(job=job):
                    await self._submit(stream, job)
                case Close():
                    self._close(stream)
        if (
            stream.session.closing is not None
            and self._live.get(stream.session.session_id) is stream
        ):
            del self._live[stream.session.session_id]  # a new start may now open a fresh one

    async def _submit(self, stream: _Stream, job: Job) -> None:
        options = DecodeOptions(
            language=job.language, prompt=job.prompt, full_window_retry=job.is_final
        )
        try:
            self._scheduler.submit(stream.key, job, options)
        except OverloadedError as exc:
            logger.error("scheduler full", extra={"session_id": stream.session.session_id})
            await self._apply(stream, stream.session.failed(job, exc, now=time.time()))

    def _close(self, stream: _Stream) -> None:
        self._streams.pop(stream.key, None)
        if self._live.get(stream.session.session_id) is stream:
            del self._live[stream.session.session_id]
        self._scheduler.forget(stream.key)
        logger.info("session closed", extra={"session_id": stream.session.session_id})
        if not self._streams:
            self._all_closed.set()

    async def _on_outcome(self, key: Hashable, job: Job, outcome: Outcome, wait_s: float) -> None:
        stream = self._streams.get(key)
        if stream is None:
            return  # the session closed while this partial ran
        now = time.time()
        if isinstance(outcome, Transcript):
            actions = stream.session.result(
                job,
                outcome.text,
                now=now,
                language=outcome.language,
                inference_s=outcome.inference_s,
            )
        else:
            logger.error(
                "transcription failed: %s",
                outcome.message,
                extra={"session_id": stream.session.session_id, "code": outcome.code},
            )
            actions = stream.session.failed(job, outcome, now=now)
        await self._apply(stream, actions)

    async def _publish(self, subject: str, message: ServerMessage) -> None:
        assert self._nc is not None
        try:
            await self._nc.publish(subject, encode_server_message(message))
        except Exception:
            # While NATS is away the client buffers; past its limit we can only log.
            logger.exception("publish failed", extra={"subject": subject})

    async def _on_disconnected(self) -> None:
        if not self._closing:  # nats-py reports its own close() as a disconnect too
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        logger.warning("reconnected to NATS")

    async def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError) and exc.subject.startswith(self._prefix):
            session_id = exc.subject[len(self._prefix) :]
            error = SttError(
                "worker too slow: a message on this session was dropped by the NATS client",
                code=ErrorCode.AUDIO_DROPPED,
            )
            await self._reject(session_id, self._live.get(session_id), error, time.time())
            return
        logger.warning("NATS error: %r", exc)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Only the main thread may own signals; tests run workers elsewhere.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
