"""The NATS worker: routes each message to its session and carries out what comes back.

It decodes each message once, routes it to its session (`sessions.py`: the session's audio
pipeline and state machine), and carries out the actions that come back: publish a message,
queue a transcription on the scheduler, close the session. A bad message costs its sender an
``error`` message and nothing else; the handler never raises.

What it leans on: `delivery.py` (subscriptions, and durable mode's acknowledgements),
`observation.py` (spans and metrics), `scheduler.py` (the engines' queue) and `process.py`
(stop signals, heap trimming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import Span, set_span_in_context

from stt_worker.config import Settings
from stt_worker.core.errors import OverloadedError, SttError
from stt_worker.core.jobs import Action, Close, Job, Publish, Speculated, Transcribe
from stt_worker.core.protocol import (
    ClientMessage,
    ErrorCode,
    ServerMessage,
    encode_server_message,
)
from stt_worker.engines.base import Engine
from stt_worker.engines.turn_check import TurnCheckEngine
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.connection import SERVICE, connect, flush_in_order
from stt_worker.runtime.connection_events import ConnectionEvents
from stt_worker.runtime.delivery import SessionAcks, delivery_for
from stt_worker.runtime.intake import Intake
from stt_worker.runtime.observation import Observer, trace_id_of
from stt_worker.runtime.pipeline import dsp_executor
from stt_worker.runtime.probes import create_probe_app
from stt_worker.runtime.process import HeapTrimmer, install_stop_signals
from stt_worker.runtime.replies import ErrorReplies
from stt_worker.runtime.scheduler import Outcome, scheduler_for
from stt_worker.runtime.sessions import Sessions, Stream
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.telemetry.logs import session_context
from stt_worker.runtime.telemetry.metrics import Metrics
from stt_worker.runtime.telemetry.tracing import extract, inject

logger = logging.getLogger(__name__)

TICK_S = 0.1


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
        self.telemetry = telemetry or Telemetry(metrics=Metrics(commit=settings.build_commit))
        self.ready = asyncio.Event()
        # The probe server's URL once it listens (STT_HTTP_PORT; None when switched off).
        self.probe_url: str | None = None
        self.probes_up = asyncio.Event()
        self._subjects = settings.stream_subjects()  # fails early on a bad partition setup
        self._warmed = False
        self._draining = False
        self._nc: Client | None = None
        # Turn checks run on the partials' engine; in turn mode they also ask Smart Turn.
        turn_mode, hold_below = settings.endpoint_mode == "turn", settings.turn_hold_prob
        self._checks = TurnCheckEngine(partial_engine or engine, turn_mode, hold_below)
        self._scheduler = scheduler_for(settings, engine, self._on_outcome, self._checks)
        self._observer = Observer(self.telemetry, engine, self._scheduler.engine_for)
        self._delivery = delivery_for(settings, self.telemetry.metrics, self._retire)
        self._dsp = dsp_executor()
        wait = self._scheduler.partial_wait_s  # stretches every session's partial cadence
        self._sessions = Sessions(
            settings, self._observer, self._delivery, self._dsp, wait, engine.multilingual
        )
        metrics = self.telemetry.metrics
        self._intake = Intake(
            settings, self._delivery, metrics, handle=self._handle, refuse=self._refuse
        )
        self._heap = HeapTrimmer()
        self._replies = ErrorReplies(settings, self._observer, self._publish)
        self._events = ConnectionEvents(
            durable=settings.durable,
            observer=self._observer,
            live_sessions=lambda: self._sessions.live,
            refuse=self._refuse,
            dropped=self._intake.dropped,
        )
        self._observer.watch(
            sessions=lambda: self.session_count,
            scheduler=self._scheduler,
            engines=self._engines(),
            connected=self._connected,
            ready=lambda: all(why is None for why in self.readiness().values()),
        )

    @property
    def session_count(self) -> int:
        return len(self._sessions.live)

    def readiness(self) -> dict[str, str | None]:
        """What /readyz reports: each check is None when fine, else the reason."""
        return {
            "nats": None if self._connected() else "not connected",
            "engine": None
            if self._warmed and all(e.healthy for e in self._engines())
            else ("failing" if self._warmed else "loading"),
            "draining": "draining" if self._draining else None,
            "delivery": self._delivery.health(),  # elastic mode: its leases renewed
        }

    def _engines(self) -> list[Engine]:
        return [e for e in (self.engine, self.partial_engine) if e is not None]

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        if stop is None:  # run as the program: SIGTERM and Ctrl-C start the drain
            stop = asyncio.Event()
            install_stop_signals(stop)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._dsp.shutdown)
            stack.callback(self._checks.close)
            if self.settings.http_port >= 0:
                await self._serve_probes(stack)
            await self._serve(stop)

    async def _serve_probes(self, stack: contextlib.AsyncExitStack) -> None:
        # Up before the model loads: /healthz answers and /readyz says "loading".
        app = create_probe_app(self.readiness, self.telemetry.metrics.registry)
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

    async def _serve(self, stop: asyncio.Event) -> None:
        # The sessions' own connection (STT_SESSION_CONNECTIONS) reports to them too.
        events = (self._events.disconnected, self._events.reconnected)
        self._nc = await connect(
            self.settings,
            "stt-streaming",
            SERVICE,
            error_cb=self._events.error,
            disconnected_cb=events[0],
            reconnected_cb=events[1],
        )
        for engine in self._engines():
            await engine.warmup()
        await self._checks.load()
        self._warmed = True
        subs = await self._intake.subscribe(self._nc, self._subjects, events)
        # SUB goes out asynchronously: ready means the server already routes audio to us.
        await flush_in_order(self._nc)
        logger.info(
            "worker ready",
            extra={"subjects": ",".join(self._subjects), "engine": self.engine.info.name},
        )
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            self._intake.inboxes.serve_in(group)
            scheduler = group.create_task(self._scheduler.run(), name="scheduler")
            ticker = group.create_task(self._tick_forever(), name="ticker")
            await stop.wait()
            await self._drain(subs)
            scheduler.cancel()
            ticker.cancel()
            self._intake.inboxes.cancel()
        self._events.closing = True
        await self._nc.drain()  # flushes every publish, then closes

    async def _drain(self, subs: list[Subscription]) -> None:
        """SIGTERM: take no new audio, finish what was accepted, publish every final."""
        self.ready.clear()
        self._draining = True
        logger.info("draining", extra={"sessions": len(self._sessions.live)})
        self._intake.stop_waiting()
        await self._intake.stop_taking(subs)
        await self._retire(lambda acks: True)
        await self._delivery.hand_over()

    async def _retire(self, belongs: Callable[[SessionAcks], bool]) -> None:
        """End the sessions `belongs` picks (all at SIGTERM, a partition's when elastic mode
        gives it up) once their inboxes are served; return when they, closing ones too, are."""
        inboxes, picks = self._intake.inboxes, self._sessions.picker(belongs)
        try:  # what the subscription admitted goes through its session first
            await asyncio.wait_for(inboxes.wait_served(picks), self.settings.drain_timeout_s)
        except TimeoutError:
            logger.error("drain timed out with messages still in sessions' inboxes")
        now = time.time()
        leaving = [s for s in self._sessions.streams.values() if belongs(s.acks)]
        for stream in leaving:
            if stream.session.closing is None:
                finalise = not self._delivery.replays  # one that replays gets the open utterance
                actions = stream.flush(now)
                actions += stream.session.end(now=now, reason="shutdown", finalise=finalise)
                await self._apply(stream, actions)
        await self._sessions.wait_closed(leaving, self.settings.drain_timeout_s)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            for stream in list(self._sessions.streams.values()):
                at = self._intake.inboxes.clock(stream.session.session_id, now)
                await self._apply(stream, stream.session.tick(now=at))
            await self._intake.tick(now)
            await self._replies.tell_held_back(now)
            streams = list(self._sessions.streams.values())
            await self._delivery.sweep((stream.acks for stream in streams), now)
            self._heap.maybe_trim(len(self._sessions.streams))

    # ------------------------------------------------------------ input

    async def _refuse(self, session_id: str, exc: SttError, now: float, msg: Msg | None) -> bool:
        stream = self._sessions.live.get(session_id)
        if stream is not None:
            trace_id = stream.trace_id
        else:
            trace_id = trace_id_of(extract(msg.headers)) if msg is not None else None
        with session_context(session_id[: self.settings.max_session_id_chars], trace_id):
            return await self._replies.reject(session_id, stream, exc, now)

    async def _handle(self, session_id: str, message: ClientMessage, msg: Msg, now: float) -> None:
        """One admitted message, in its session's task: route it, carry out the actions."""
        stream = self._sessions.live.get(session_id)
        parent = extract(msg.headers)
        trace_id = stream.trace_id if stream else trace_id_of(parent)
        # Cut for the log too: a hostile 4 KB id must not make every log line 4 KB.
        with session_context(session_id[: self.settings.max_session_id_chars], trace_id):
            if stream is not None and await stream.acks.skip(message, msg):
                return  # elastic mode: audio a final published before a move covered
            try:
                stream, actions = await self._sessions.route(
                    session_id, stream, message, now, parent
                )
            except Exception as exc:
                if isinstance(exc, SttError):
                    error = exc
                else:
                    logger.exception("unexpected failure handling a message")
                    error = SttError(f"internal error: {exc!r}", code=ErrorCode.INTERNAL_ERROR)
                await self._replies.reject(session_id, stream, error, now)
                await self._delivery.reject(msg)
                return
            if stream is not None:
                if parent is not None:
                    stream.observer.parent = parent  # the publisher's current turn
                await stream.hold(message, msg, now)
                await self._apply(stream, actions)

    # ------------------------------------------------------------ actions

    async def _apply(
        self, stream: Stream, actions: Iterable[Action], job: Job | None = None
    ) -> None:
        """Carry out `actions`; `job` is the transcription they answer, if any."""
        for action in actions:
            match action:
                case Publish(message=message, start_sample=start):
                    if (out := stream.stamp(message, start)) is not None:  # None: a replay
                        await self._publish(stream.subject, out, stream.observer.span_for(out))
                        stream.observer.published(out, job)
                case Transcribe(job=queued):
                    await self._submit(stream, queued)
                case Speculated(job=job, late=late):  # `job`: what the `Publish` after answers
                    stream.speculated(job, late, self._scheduler)
                case Close(reason=reason):
                    self._close(stream, reason)
                    await stream.acks.release(reason, stream.session.first_unsettled_sample)
        if stream.session.closing is not None:
            self._sessions.unlist(stream)  # a new start may now open a fresh one
        # Every result this audio fed is out (published above): its audio may be settled.
        await stream.acks.settle(stream.session)

    async def _submit(self, stream: Stream, job: Job) -> None:
        utterance = stream.observer.submitted(job)
        try:
            self._scheduler.submit(stream.key, job, set_span_in_context(utterance))
        except OverloadedError as exc:
            logger.error("scheduler full")
            await self._apply(stream, stream.session.failed(job, exc, now=time.time()), job)

    def _close(self, stream: Stream, reason: str) -> None:
        self._sessions.remove(stream)
        self._intake.closed(stream.session.session_id)
        self._scheduler.forget(stream.key)
        stream.observer.closed(reason)
        self._heap.session_closed()
        logger.info("session closed", extra={"reason": reason})

    async def _on_outcome(self, key: Hashable, job: Job, outcome: Outcome, wait_s: float) -> None:
        stream = self._sessions.streams.get(key)
        if stream is None:
            return  # the session closed while this partial ran
        now = time.time()
        with session_context(stream.session.session_id, stream.trace_id):
            stream.observer.inference(job, outcome, wait_s, now)
            await self._apply(stream, stream.answer(job, outcome, now), job)

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
