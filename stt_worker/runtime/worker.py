"""The NATS worker: the only module that talks to NATS.

It decodes each message once, routes it to its session's audio pipeline and state machine
(`session.py`), and carries out the actions that come back: publish a message, queue a
transcription on the scheduler, close the session. A bad message costs its sender an
``error`` message and nothing else; the handler never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import itertools
import logging
import signal
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import nats
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from stt_worker.config import Settings
from stt_worker.core.audio import (
    BYTES_PER_SAMPLE,
    SAMPLE_RATE_HZ,
    AudioNormalizer,
    Pcm16,
    check_format,
)
from stt_worker.core.echo import EchoCanceller
from stt_worker.core.errors import OverloadedError, ProtocolError, SttError
from stt_worker.core.jobs import Action, Close, Job, Publish, Transcribe
from stt_worker.core.ledger import AckLedger, Held
from stt_worker.core.protocol import (
    Chunk,
    ClientMessage,
    End,
    Error,
    ErrorCode,
    Interrupt,
    Playback,
    ServerMessage,
    SessionClosed,
    Start,
    StateChange,
    Transcription,
    check_session_id,
    chunk_pcm_bytes,
    decode_client_message,
    encode_server_message,
    whisper_language,
)
from stt_worker.core.session import Session, SessionConfig
from stt_worker.core.turns import Backchannels, Commands
from stt_worker.core.vad import Frames, VoiceActivityDetector
from stt_worker.engines.base import Engine, Transcript
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.connection import SERVICE, connect
from stt_worker.runtime.decode_plan import plan
from stt_worker.runtime.probes import create_probe_app
from stt_worker.runtime.scheduler import InferenceScheduler, Outcome
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.telemetry.logs import session_context
from stt_worker.runtime.telemetry.tracing import extract, inject

logger = logging.getLogger(__name__)

TICK_S = 0.1
# Sessions closed before the freed heap is handed back to the OS (see `_release_free_heap`).
TRIM_AFTER_CLOSES = 64


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
        max_session_s=settings.max_session_s,
        context_chars=settings.context_chars,
        barge_in_words=settings.barge_in_mode == "words",
        backchannels=Backchannels(settings.backchannel_phrases),
        commands=Commands(settings.command_phrases),
        probe_step_ms=settings.barge_in_probe_ms,
        adaptive_endpoint=settings.endpoint_mode == "adaptive",
        endpoint_min_ms=settings.endpoint_min_silence_ms,
        endpoint_max_ms=settings.endpoint_max_silence_ms,
        endpoint_finished_prob=settings.endpoint_finished_prob,
        endpoint_unfinished_prob=settings.endpoint_unfinished_prob,
    )


@dataclass(slots=True)
class _Stream:
    """A live session with its audio pipeline (state machine, resampler, VAD) and its spans."""

    key: int
    subject: str
    session: Session
    normalizer: AudioNormalizer
    vad: VoiceActivityDetector
    span: Span
    last_seq: int | None = None
    # The trace context the publisher sent last (`traceparent`): utterances hang under it.
    parent: Context | None = None
    # Open utterance spans, by utterance id: at most the open utterance plus pending finals.
    utterances: dict[int, Span] = field(default_factory=dict)
    # From the first `playback`: the assistant's audio, and its echo taken out of the mic.
    echo: EchoCanceller | None = None
    playback: AudioNormalizer | None = None
    # Durable mode: the session's JetStream messages not yet acknowledged.
    ledger: AckLedger | None = None

    @property
    def trace_id(self) -> str | None:
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def feed(self, pcm: bytes, now: float) -> list[Action]:
        return self.session.audio(self.clean(pcm), now=now)

    def clean(self, pcm: bytes) -> Frames:
        """The signal processing of a chunk (resampling, echo cancellation, VAD framing),
        apart from the session so that it can run off the loop."""
        return self.vad.push(self._cancel_echo(self.normalizer.push(pcm)))

    def flush_audio(self, now: float) -> list[Action]:
        """Push the resampler tail and the last partial frame into the session."""
        audio = self._cancel_echo(self.normalizer.flush())
        if self.echo is not None:
            audio = np.concatenate([audio, self.echo.flush()])
        actions = self.session.audio(self.vad.push(audio), now=now)
        return actions + self.session.audio(self.vad.flush(), now=now)

    def _cancel_echo(self, samples: Pcm16) -> Pcm16:
        return samples if self.echo is None else self.echo.process(samples)


class Worker:
    """Serves `ai.voice.stream.*` (or its partitions) until stopped, then drains."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        partial_engine: Engine | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.partial_engine = partial_engine
        self.telemetry = telemetry or Telemetry()
        self.ready = asyncio.Event()
        # The probe server's URL once it listens (STT_HTTP_PORT; None when switched off).
        self.probe_url: str | None = None
        self.probes_up = asyncio.Event()
        self._subjects = settings.stream_subjects()  # fails early on a bad partition setup
        self._config = session_config(settings)
        self._metrics = self.telemetry.metrics
        self._tracer = self.telemetry.tracer
        self._warmed = False
        self._draining = False
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
        # Durable mode: the highest stream sequence taken, and the sequences held unacknowledged.
        self._last_stream_seq = 0
        self._held_seqs: set[int] = set()
        self._progress_sweep_at = 0.0
        self._closed_since_trim = 0
        # Per-chunk signal processing too costly for the loop (echo cancellation). One job per
        # subscription at a time (its callback awaits it), so the executor's queue stays short.
        self._dsp = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stt-dsp")
        self._watch_metrics()

    @property
    def session_count(self) -> int:
        return len(self._live)

    def readiness(self) -> dict[str, str | None]:
        """What /readyz reports: each check is None when fine, else the reason."""
        engines = [e for e in (self.engine, self.partial_engine) if e is not None]
        return {
            "nats": None if self._nc is not None and self._nc.is_connected else "not connected",
            "engine": None
            if self._warmed and all(e.healthy for e in engines)
            else ("failing" if self._warmed else "loading"),
            "draining": "draining" if self._draining else None,
        }

    def _watch_metrics(self) -> None:
        metrics = self._metrics
        metrics.watch("stt_sessions_active", "Sessions taking audio", lambda: len(self._live))
        metrics.watch(
            "stt_inference_queue_depth",
            "Transcriptions waiting for an engine slot",
            lambda: {
                "final": self._scheduler.pending_finals,
                "other": self._scheduler.pending - self._scheduler.pending_finals,
            },
            label="kind",
        )
        engines = [e for e in (self.engine, self.partial_engine) if e is not None]
        metrics.watch(
            "stt_backend_retries",
            "Requests to the Whisper backend retried",
            lambda: sum(e.retries for e in engines),
            counter=True,
        )
        metrics.watch(
            "stt_nats_connected",
            "1 while connected to NATS",
            lambda: float(self._nc is not None and self._nc.is_connected),
        )
        metrics.watch("stt_ready", "1 while /readyz answers ready", lambda: float(self._is_ready()))

    def _is_ready(self) -> bool:
        return all(why is None for why in self.readiness().values())

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        if stop is None:  # run as the program: SIGTERM and Ctrl-C start the drain
            stop = asyncio.Event()
            _install_signal_handlers(stop)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._dsp.shutdown)
            if self.settings.http_port >= 0:
                # Up before the model loads: /healthz answers and /readyz says "loading".
                app = create_probe_app(self.readiness, self._metrics.registry)
                self.probe_url = await stack.enter_async_context(
                    serving_in_loop(
                        app,
                        host=self.settings.http_host,
                        port=self.settings.http_port,
                        lifespan="off",
                        access_log=False,  # probes every few seconds are not news
                    )
                )
                self.probes_up.set()
                logger.info("probes and metrics at %s", self.probe_url)
            await self._serve(stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self._nc = await connect(
            settings,
            "stt-streaming",
            SERVICE,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        await self.engine.warmup()
        if self.partial_engine is not None:
            await self.partial_engine.warmup()
        self._warmed = True
        if self.settings.durable:
            subs = [await self._subscribe_durable()]
        else:
            subs = [
                await self._nc.subscribe(
                    subject,
                    cb=self._on_message,
                    pending_msgs_limit=self.settings.pending_msgs_limit,
                    pending_bytes_limit=self.settings.pending_msgs_limit * 4096,
                )
                for subject in self._subjects
            ]
        # SUB goes out asynchronously: ready means the server already routes audio to us.
        await self._nc.flush()
        logger.info(
            "worker ready",
            extra={"subjects": ",".join(self._subjects), "engine": self.engine.info.name},
        )
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            scheduler = group.create_task(self._scheduler.run(), name="scheduler")
            ticker = group.create_task(self._tick_forever(), name="ticker")
            await stop.wait()
            await self._drain(subs)
            scheduler.cancel()
            ticker.cancel()
        self._closing = True
        await self._nc.drain()  # flushes every publish, then closes

    async def _subscribe_durable(self) -> Subscription:
        """Durable mode: a JetStream work-queue stream keeps each audio message until we
        acknowledge it, and our durable consumer delivers this worker's share of it."""
        assert self._nc is not None
        js = self._nc.jetstream()
        name = self.settings.jetstream_stream
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            info = await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=self.settings.jetstream_subjects(),
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    max_age=self.settings.jetstream_max_age_s,
                )
            )
        if info.config.retention != RetentionPolicy.WORK_QUEUE:
            # Re-creating the consumer below would replay audio already transcribed.
            raise SttError(f"JetStream stream {name!r} must have work-queue retention")
        consumer = self.settings.consumer_name()
        # Re-created at every start: what the previous process held unacknowledged then comes
        # again at once and in order, rather than after ack_wait and behind newer audio. A
        # work queue keeps only unacknowledged messages, so "deliver all" resumes exactly at
        # the first unacknowledged chunk.
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(name, consumer)
        config = ConsumerConfig(
            durable_name=consumer,
            deliver_subject=self._nc.new_inbox(),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=self.settings.max_ack_pending,
            filter_subjects=self._subjects,
        )
        await js.add_consumer(name, config)
        logger.info("durable mode", extra={"stream": name, "consumer": consumer})
        # The server never has more than max_ack_pending out, so a buffer that large never
        # drops a message (SlowConsumerError): back-pressure stays on the server, which keeps it.
        limit = max(self.settings.pending_msgs_limit, self.settings.max_ack_pending)
        return await js.subscribe_bind(
            name,
            config,
            consumer,
            cb=self._on_message,
            manual_ack=True,
            pending_msgs_limit=limit,
            pending_bytes_limit=limit * 4096,
        )

    async def _drain(self, subs: list[Subscription]) -> None:
        """SIGTERM: take no new audio, finish what was accepted, publish every final."""
        self.ready.clear()
        self._draining = True
        logger.info("draining", extra={"sessions": len(self._live)})
        for sub in subs:
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
            if self.settings.durable and now >= self._progress_sweep_at:
                await self._keep_in_progress(now)
            if self._closed_since_trim >= TRIM_AFTER_CLOSES or (
                self._closed_since_trim and not self._streams
            ):
                self._closed_since_trim = 0
                _release_free_heap()

    async def _keep_in_progress(self, now: float) -> None:
        """Tell the server that messages held for a long time (a session's `start`, audio
        behind a slow backend) are still being worked on, so it does not redeliver them."""
        ack_wait_s = self.settings.ack_wait_s
        self._progress_sweep_at = now + ack_wait_s / 4
        for stream in list(self._streams.values()):
            if stream.ledger is not None:
                for message in stream.ledger.stale(now, ack_wait_s / 2):
                    with contextlib.suppress(nats.errors.Error):
                        await message.in_progress()

    # ------------------------------------------------------------ input

    async def _on_message(self, msg: Msg) -> None:
        if self.settings.durable and not await self._first_delivery(msg):
            return
        # The session id is the subject's last token, partitioned or not.
        session_id = msg.subject.rsplit(".", 1)[-1]
        now = time.time()
        stream = self._live.get(session_id)
        parent = extract(msg.headers)
        trace_id = stream.trace_id if stream else _trace_id_of(parent)
        # Cut for the log too: a hostile 4 KB id must not make every log line 4 KB.
        with session_context(session_id[: self.settings.max_session_id_chars], trace_id):
            try:
                check_session_id(session_id, self.settings.max_session_id_chars)
                message = decode_client_message(msg.data)
                stream, actions = await self._dispatch(session_id, stream, message, now, parent)
            except SttError as exc:
                await self._reject(session_id, stream, exc, now)
                await self._ack_rejected(msg)
                return
            except Exception as exc:
                logger.exception("unexpected failure handling a message")
                error = SttError(f"internal error: {exc!r}", code=ErrorCode.INTERNAL_ERROR)
                await self._reject(session_id, stream, error, now)
                await self._ack_rejected(msg)
                return
            if stream is not None:
                if parent is not None:
                    stream.parent = parent  # the publisher's current turn
                if self.settings.durable:
                    await self._hold(stream, message, msg, now)
                await self._apply(stream, actions)

    # ------------------------------------------------------------ durable mode: acknowledgements

    async def _first_delivery(self, msg: Msg) -> bool:
        """Whether to take `msg`: a redelivery of what this process already took is not."""
        seq = msg.metadata.sequence.stream
        if seq > self._last_stream_seq:
            self._last_stream_seq = seq
            return True
        # Still held: it is in progress. Not held: its audio was used, or dropped and
        # reported (`audio_dropped`); either way it is done.
        with contextlib.suppress(nats.errors.Error):
            await (msg.in_progress() if seq in self._held_seqs else msg.ack())
        return False

    async def _hold(self, stream: _Stream, message: ClientMessage, msg: Msg, now: float) -> None:
        if stream.ledger is None:
            stream.ledger = AckLedger()
        seq = msg.metadata.sequence.stream
        self._held_seqs.add(seq)
        normalizer = stream.normalizer
        superseded = stream.ledger.hold(
            message,
            msg,
            seq,
            sample_rate_hz=normalizer.sample_rate_hz,
            channels=normalizer.channels,
            now=now,
        )
        await self._ack(superseded)

    async def _ack(self, held: Iterable[Held]) -> None:
        for each in held:
            self._held_seqs.discard(each.stream_seq)
            with contextlib.suppress(nats.errors.Error):
                await each.message.ack()

    async def _ack_rejected(self, msg: Msg) -> None:
        """A rejected message would be rejected again: replaying it serves nobody."""
        if self.settings.durable:
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()

    def _with_sources(self, stream: _Stream, message: ServerMessage) -> ServerMessage:
        """Durable mode: stamp a transcript with the stream sequences of its audio."""
        if stream.ledger is None or not isinstance(message, Transcription):
            return message
        start = round(message.audio_start_s * SAMPLE_RATE_HZ)
        seqs = stream.ledger.source_seqs(start, round(message.audio_end_s * SAMPLE_RATE_HZ))
        if seqs is None:
            return message
        return msgspec.structs.replace(message, source_seq_first=seqs[0], source_seq_last=seqs[1])

    async def _dispatch(
        self,
        session_id: str,
        stream: _Stream | None,
        message: ClientMessage,
        now: float,
        parent: Context | None,
    ) -> tuple[_Stream | None, list[Action]]:
        match message:
            case Start():
                return self._start(session_id, stream, message, now, parent)
            case Chunk():
                return await self._chunk(session_id, stream, message, now, parent)
            case Playback():
                return self._playback(session_id, stream, message, now, parent), []
            case StateChange(state=state):
                if stream is None:
                    logger.info("state_change opened a session")
                    stream = self._open(session_id, Start(state=state), now, parent)
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
        self,
        session_id: str,
        stream: _Stream | None,
        start: Start,
        now: float,
        parent: Context | None,
    ) -> tuple[_Stream, list[Action]]:
        check_format(start.sample_rate, start.channels)
        if stream is None:
            return self._open(session_id, start, now, parent), []
        logger.info("repeated start updates the session")
        actions: list[Action] = []
        if (start.sample_rate, start.channels) != (
            stream.normalizer.sample_rate_hz,
            stream.normalizer.channels,
        ):
            actions += stream.flush_audio(now)
            stream.normalizer = AudioNormalizer(start.sample_rate, start.channels)
        actions += stream.session.update(
            now=now,
            state=start.state,
            speaker_id=start.speaker_id,
            language=whisper_language(start.language),
        )
        return stream, actions

    async def _chunk(
        self,
        session_id: str,
        stream: _Stream | None,
        chunk: Chunk,
        now: float,
        parent: Context | None,
    ) -> tuple[_Stream, list[Action]]:
        pcm = self._checked_pcm(chunk)
        self._metrics.chunks.inc()
        self._metrics.chunk_bytes.inc(len(pcm))
        if stream is None:
            logger.info("chunk without start: opening with defaults")
            stream = self._open(session_id, Start(), now, parent)
        if chunk.seq is not None:
            if stream.last_seq is not None and chunk.seq <= stream.last_seq:
                raise ProtocolError(
                    f"chunk seq {chunk.seq} after seq {stream.last_seq}: repeated or late, "
                    "not used",
                    code=ErrorCode.CHUNK_OUT_OF_ORDER,
                )
            stream.last_seq = chunk.seq
        normalizer = stream.normalizer
        bytes_per_s = normalizer.sample_rate_hz * normalizer.channels * BYTES_PER_SAMPLE
        self._metrics.audio_seconds.inc(len(pcm) / bytes_per_s)
        if stream.echo is None:
            return stream, stream.feed(pcm, now)  # tens of microseconds: not worth a thread hop
        # Echo cancellation costs about 150 us a chunk: off the loop. The subscription hands
        # this session's next message over only once this returns, so its order holds.
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(self._dsp, stream.clean, pcm)
        return stream, stream.session.audio(frames, now=now)

    def _playback(
        self,
        session_id: str,
        stream: _Stream | None,
        playback: Playback,
        now: float,
        parent: Context | None,
    ) -> _Stream:
        """The assistant's audio: queued as the echo reference for this session's mic."""
        pcm = self._checked_pcm(playback)
        if stream is None:
            stream = self._open(session_id, Start(state="responding"), now, parent)
        if stream.playback is None:
            stream.playback = AudioNormalizer(
                playback.sample_rate or stream.normalizer.sample_rate_hz,
                playback.channels or stream.normalizer.channels,
            )
        if stream.echo is None:
            stream.echo = EchoCanceller()  # ProtocolError when the extra is missing
            logger.info("echo cancellation on")
        stream.echo.playback(stream.playback.push(pcm))
        return stream

    def _checked_pcm(self, message: Chunk | Playback) -> bytes:
        """The message's audio within STT_MAX_CHUNK_BYTES, checked before any session opens
        for it, so a bad message costs nothing; oversized base64 is not even decoded."""
        limit = self.settings.max_chunk_bytes
        encoded = message.audio_b64
        if message.audio is None and encoded is not None and len(encoded) // 4 * 3 > limit + 3:
            raise _too_large(len(encoded) // 4 * 3, limit)
        pcm = chunk_pcm_bytes(message)
        if len(pcm) > limit:
            raise _too_large(len(pcm), limit)
        return pcm

    def _open(self, session_id: str, start: Start, now: float, parent: Context | None) -> _Stream:
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
            language=whisper_language(start.language) or self.settings.whisper_language,
        )
        # The publisher's trace when it sent one, else a trace of our own per session.
        span = self._tracer.start_span(
            "stt.session",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "stt.session_id": session_id,
                "stt.speaker_id": str(start.speaker_id or ""),
                "stt.engine": self.engine.info.name,
                "stt.model": self.engine.info.model,
                "stt.device": self.engine.info.device,
                "stt.sample_rate_hz": start.sample_rate,
            },
        )
        stream = _Stream(
            key=next(self._keys),
            subject=f"{self.settings.transcription_subject_prefix}.{session_id}",
            session=session,
            normalizer=AudioNormalizer(start.sample_rate, start.channels),
            vad=VoiceActivityDetector(self.settings.vad_aggressiveness),
            span=span,
            parent=parent,
        )
        self._live[session_id] = stream
        self._streams[stream.key] = stream
        self._all_closed.clear()
        self._metrics.sessions_opened.inc()
        logger.info("session opened", extra={"trace_id": stream.trace_id})
        return stream

    async def _reject(
        self, session_id: str, stream: _Stream | None, exc: SttError, now: float
    ) -> None:
        shown = session_id[: self.settings.max_session_id_chars]
        logger.warning(
            "rejected message: %s",
            exc.message[:1024],
            extra={"session_id": shown, "code": exc.code},
        )
        speaker = stream.session.speaker_id if stream else None
        if stream is not None:
            stream.span.add_event("rejected", {"stt.error_code": exc.code})
        prefix = self.settings.transcription_subject_prefix
        try:
            check_session_id(session_id, self.settings.max_session_id_chars)
        except ProtocolError:
            # An id unfit for a subject is never put in one: its error goes to the bare
            # prefix, which no session's subject equals, with the id cut to a safe length.
            await self._publish(prefix, Error(shown, exc.code, exc.message[:1024], now))
            return
        error = Error(session_id, exc.code, exc.message, now, speaker)
        await self._publish(f"{prefix}.{session_id}", error, stream.span if stream else None)

    # ------------------------------------------------------------ actions

    async def _apply(
        self, stream: _Stream, actions: Iterable[Action], job: Job | None = None
    ) -> None:
        """Carry out `actions`; `job` is the transcription they answer, if any."""
        for action in actions:
            match action:
                case Publish(message=message):
                    message = self._with_sources(stream, message)
                    await self._publish(stream.subject, message, self._span_for(stream, message))
                    self._published(stream, message, job)
                case Transcribe(job=queued):
                    await self._submit(stream, queued)
                case Close(reason=reason):
                    self._close(stream, reason)
                    if stream.ledger is not None:
                        # After a drain, the session's rest (if the publisher goes on) is the
                        # next worker's: it keeps the start and turn to reopen it with.
                        keep = reason == "shutdown"
                        await self._ack(stream.ledger.release_all(keep_config=keep))
        if (
            stream.session.closing is not None
            and self._live.get(stream.session.session_id) is stream
        ):
            del self._live[stream.session.session_id]  # a new start may now open a fresh one
        if stream.ledger is not None:
            # Every result this audio fed is out (published above, on the same connection,
            # so the server sees it before these acknowledgements).
            await self._ack(stream.ledger.settled(stream.session.first_unsettled_sample))

    def _span_for(self, stream: _Stream, message: ServerMessage) -> Span:
        """The span a published message continues: its utterance's, else the session's."""
        utterance_id = getattr(message, "utterance_id", None)
        return stream.utterances.get(utterance_id, stream.span) if utterance_id else stream.span

    def _published(self, stream: _Stream, message: ServerMessage, job: Job | None) -> None:
        """Count what went out; a final (or its error) also closes its utterance span."""
        metrics = self._metrics
        match message:
            case Transcription(is_final=True, utterance_id=utterance_id):
                metrics.transcripts.labels("final").inc()
                if job is not None and job.ended_at is not None:
                    latency_s = time.time() - job.ended_at + job.trailing_silence_s
                    metrics.final_latency.observe(latency_s)
                self._end_utterance(stream, utterance_id)
            case Transcription():
                metrics.transcripts.labels("partial").inc()
            case Interrupt():
                metrics.interrupts.inc()
                stream.span.add_event("interrupt", {"stt.utterance_id": message.utterance_id})
            case Error(code=code, utterance_id=utterance_id):
                metrics.errors.labels(code).inc()
                if utterance_id is not None:
                    span = stream.utterances.get(utterance_id)
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, code))
                    self._end_utterance(stream, utterance_id)
            case SessionClosed():
                pass

    def _end_utterance(self, stream: _Stream, utterance_id: int) -> None:
        span = stream.utterances.pop(utterance_id, None)
        if span is not None:
            span.end()

    async def _submit(self, stream: _Stream, job: Job) -> None:
        if job.utterance_id not in stream.utterances:
            # Under the publisher's latest trace context when it sends one (one trace per
            # turn), else under the session span.
            parent = stream.parent or trace.set_span_in_context(stream.span)
            stream.utterances[job.utterance_id] = self._tracer.start_span(
                "stt.utterance",
                context=parent,
                attributes={
                    "stt.session_id": stream.session.session_id,
                    "stt.speaker_id": str(stream.session.speaker_id or ""),
                    "stt.utterance_id": job.utterance_id,
                },
            )
        if job.is_final:
            self._metrics.utterances.labels(job.end_reason or "unknown").inc()
            span = stream.utterances[job.utterance_id]
            span.set_attribute("stt.audio_s", round(job.audio_s, 3))
            span.set_attribute("stt.end_reason", job.end_reason or "unknown")
        try:
            self._scheduler.submit(stream.key, job)
        except OverloadedError as exc:
            logger.error("scheduler full")
            await self._apply(stream, stream.session.failed(job, exc, now=time.time()), job)

    def _close(self, stream: _Stream, reason: str) -> None:
        self._streams.pop(stream.key, None)
        if self._live.get(stream.session.session_id) is stream:
            del self._live[stream.session.session_id]
        self._scheduler.forget(stream.key)
        for utterance_id in list(stream.utterances):
            self._end_utterance(stream, utterance_id)  # e.g. speech that held no words
        stream.span.set_attribute("stt.close_reason", reason)
        stream.span.end()
        self._metrics.sessions_closed.labels(reason).inc()
        self._closed_since_trim += 1
        logger.info("session closed", extra={"reason": reason})
        if not self._streams:
            self._all_closed.set()

    async def _on_outcome(self, key: Hashable, job: Job, outcome: Outcome, wait_s: float) -> None:
        stream = self._streams.get(key)
        if stream is None:
            return  # the session closed while this partial ran
        now = time.time()
        with session_context(stream.session.session_id, stream.trace_id):
            self._record_inference(stream, job, outcome, wait_s, now)
            if isinstance(outcome, Transcript):
                actions = stream.session.result(
                    job,
                    outcome.text,
                    now=now,
                    language=outcome.language,
                    inference_s=outcome.inference_s,
                    end_prob=outcome.end_prob,
                )
            else:
                logger.error(
                    "transcription failed: %s", outcome.message, extra={"code": outcome.code}
                )
                actions = stream.session.failed(job, outcome, now=now)
            await self._apply(stream, actions, job)

    def _record_inference(
        self, stream: _Stream, job: Job, outcome: Outcome, wait_s: float, now: float
    ) -> None:
        """Metrics and the `stt.inference` span of one engine call, after the fact (the
        scheduler knows nothing of telemetry)."""
        decode = plan(job)
        kind = decode.label
        engine = self._scheduler.engine_for(decode.engine)
        self._metrics.queue_wait.labels(kind).observe(wait_s)
        inference_s = outcome.inference_s if isinstance(outcome, Transcript) else 0.0
        attributes: dict[str, str | int | float | bool] = {
            "stt.session_id": stream.session.session_id,
            "stt.speaker_id": str(stream.session.speaker_id or ""),
            "stt.utterance_id": job.utterance_id,
            "stt.final": job.is_final,
            "stt.engine": engine.info.name,
            "stt.model": engine.info.model,
            "stt.device": engine.info.device,
            "stt.audio_s": round(job.audio_s, 3),
            "stt.queue_wait_s": round(wait_s, 4),
        }
        if isinstance(outcome, Transcript):
            rtf = inference_s / job.audio_s if job.audio_s > 0 else 0.0
            self._metrics.inference_seconds.labels(engine.info.name, kind).observe(inference_s)
            self._metrics.real_time_factor.labels(engine.info.name, kind).observe(rtf)
            attributes["stt.inference_s"] = round(inference_s, 4)
            attributes["stt.real_time_factor"] = round(rtf, 4)
        parent = stream.utterances.get(job.utterance_id, stream.span)
        end_ns = int(now * 1e9)
        span = self._tracer.start_span(
            "stt.inference",
            context=trace.set_span_in_context(parent),
            start_time=end_ns - int((inference_s + wait_s) * 1e9),
            attributes=attributes,
        )
        if not isinstance(outcome, Transcript):
            span.record_exception(outcome)
            span.set_status(Status(StatusCode.ERROR, outcome.code))
        span.end(end_time=end_ns)

    async def _publish(
        self, subject: str, message: ServerMessage, span: Span | None = None
    ) -> None:
        assert self._nc is not None
        headers = inject(span) if span is not None else None
        try:
            await self._nc.publish(subject, encode_server_message(message), headers=headers)
        except Exception:
            # While NATS is away the client buffers; past its limit we can only log.
            logger.exception("publish failed", extra={"subject": subject})

    async def _on_disconnected(self) -> None:
        if not self._closing:  # nats-py reports its own close() as a disconnect too
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self._metrics.nats_reconnects.inc()
        logger.warning("reconnected to NATS")

    async def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            session_id = exc.subject.rsplit(".", 1)[-1]
            error = SttError(
                "worker too slow: a message on this session was dropped by the NATS client",
                code=ErrorCode.AUDIO_DROPPED,
            )
            await self._reject(session_id, self._live.get(session_id), error, time.time())
            return
        logger.warning("NATS error: %r", exc)


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"chunk of {size} bytes exceeds STT_MAX_CHUNK_BYTES={limit}; split it into smaller chunks",
        code=ErrorCode.CHUNK_TOO_LARGE,
    )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: musl, macOS
        return None


def _release_free_heap() -> None:
    """glibc keeps the memory of closed sessions for reuse, so after a burst of sessions the
    process's RSS would stay at the peak; `malloc_trim` returns the free part to the OS."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _trace_id_of(context: Context | None) -> str | None:
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Only the main thread may own signals; tests run workers elsewhere.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
