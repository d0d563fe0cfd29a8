"""What the worker tells its operators: spans and Prometheus metrics, recorded after the fact.

`Observer` is the worker's: it opens each session's span, counts what arrives, and exposes
the values other objects own (queue depths, readiness) at scrape time. `SessionObserver` is
one session's: its spans and the metrics of what it transcribes and publishes.

Spans: ``stt.session`` (one per session, under the publisher's trace when it sends one), an
``stt.utterance`` per utterance (under the publisher's latest trace context, else the
session's), and an ``stt.inference`` per engine call under its utterance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from stt_worker.core.jobs import Job
from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    Interrupt,
    ServerMessage,
    SessionClosed,
    Start,
    Transcription,
    TurnResumed,
)
from stt_worker.core.session import Session
from stt_worker.engines.base import Engine, Transcript
from stt_worker.runtime.decode_plan import EngineRole, plan
from stt_worker.runtime.scheduler import InferenceScheduler, Outcome
from stt_worker.runtime.telemetry import Telemetry

Attributes = dict[str, str | int | float | bool]


def trace_id_of(context: Context | None) -> str | None:
    """The trace id a publisher's context carries, as logged (32 hex digits)."""
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


class Observer:
    """A worker's telemetry: opens the sessions' spans, counts what the worker receives."""

    def __init__(
        self,
        telemetry: Telemetry,
        engine: Engine,
        engine_for: Callable[[EngineRole], Engine],
    ) -> None:
        self.metrics = telemetry.metrics
        self.tracer = telemetry.tracer
        self.engine_for = engine_for
        self._engine = engine

    def watch(
        self,
        *,
        sessions: Callable[[], int],
        scheduler: InferenceScheduler,
        engines: Iterable[Engine],
        connected: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        """Expose at scrape time the values the worker's parts own."""
        metrics = self.metrics
        metrics.watch("stt_sessions_active", "Sessions taking audio", sessions)
        metrics.watch(
            "stt_inference_queue_depth",
            "Transcriptions waiting for an engine slot",
            lambda: {
                "final": scheduler.pending_finals,
                "other": scheduler.pending - scheduler.pending_finals,
            },
            label="kind",
        )
        metrics.watch(
            "stt_partial_duty",
            "Share of time partials may decode (1: unpaced; less while threads wait for a CPU)",
            lambda: scheduler.pace.duty,
        )
        metrics.watch(
            "stt_cpu_wait_share",
            "Share of runnable time this process's threads last waited for a CPU",
            lambda: scheduler.pace.wait_share or 0.0,
        )
        engines = list(engines)
        metrics.watch(
            "stt_backend_retries",
            "Requests to the Whisper backend retried",
            lambda: sum(e.retries for e in engines),
            counter=True,
        )
        metrics.watch("stt_nats_connected", "1 while connected to NATS", lambda: float(connected()))
        metrics.watch("stt_ready", "1 while /readyz answers ready", lambda: float(ready()))

    def open_session(
        self, session: Session, start: Start, parent: Context | None
    ) -> SessionObserver:
        # The publisher's trace when it sent one, else a trace of our own per session.
        span = self.tracer.start_span(
            "stt.session",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "stt.session_id": session.session_id,
                "stt.speaker_id": str(start.speaker_id or ""),
                "stt.engine": self._engine.info.name,
                "stt.model": self._engine.info.model,
                "stt.device": self._engine.info.device,
                "stt.sample_rate_hz": start.sample_rate,
            },
        )
        self.metrics.sessions_opened.inc()
        return SessionObserver(self, session, span, parent)

    def chunk_received(self, pcm_bytes: int) -> None:
        self.metrics.chunks.inc()
        self.metrics.chunk_bytes.inc(pcm_bytes)

    def audio_received(self, seconds: float) -> None:
        self.metrics.audio_seconds.inc(seconds)

    def reconnected(self) -> None:
        self.metrics.nats_reconnects.inc()

    def rejected(self, code: str) -> None:
        """A message refused (answered or not)."""
        self.metrics.rejections.labels(code).inc()

    def error_replied(self, code: str) -> None:
        """An ``error`` published for a refused message (session errors count themselves as
        they are published, in `SessionObserver.published`)."""
        self.metrics.errors.labels(code).inc()

    def reply_held_back(self, code: str) -> None:
        """A refused message's reply withheld by the error-reply limit."""
        self.metrics.replies_held_back.labels(code).inc()


class SessionObserver:
    """One session's spans, and the metrics of what it transcribes and publishes."""

    def __init__(
        self, owner: Observer, session: Session, span: Span, parent: Context | None
    ) -> None:
        self._owner = owner
        self._metrics = owner.metrics
        self._session = session
        self._span = span
        # The trace context the publisher sent last (`traceparent`): utterances hang under it.
        self.parent = parent
        # Open utterance spans, by utterance id: at most the open utterance plus pending finals.
        self._utterances: dict[int, Span] = {}

    @property
    def span(self) -> Span:
        """The ``stt.session`` span."""
        return self._span

    @property
    def trace_id(self) -> str | None:
        context = self._span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def span_for(self, message: ServerMessage) -> Span:
        """The span a published message continues: its utterance's, else the session's."""
        utterance_id = getattr(message, "utterance_id", None)
        return self._utterances.get(utterance_id, self._span) if utterance_id else self._span

    def rejected(self, code: str) -> None:
        self._span.add_event("rejected", {"stt.error_code": code})

    def submitted(self, job: Job) -> Span:
        """A transcription is queued: its utterance's span opens with its first job. Returns
        that span, the parent of what the engine call does (an HTTP request)."""
        if job.utterance_id not in self._utterances:
            # Under the publisher's latest trace context when it sends one (one trace per
            # turn), else under the session span.
            parent = self.parent or trace.set_span_in_context(self._span)
            self._utterances[job.utterance_id] = self._owner.tracer.start_span(
                "stt.utterance",
                context=parent,
                attributes={
                    "stt.session_id": self._session.session_id,
                    "stt.speaker_id": str(self._session.speaker_id or ""),
                    "stt.utterance_id": job.utterance_id,
                },
            )
        if job.is_final:
            self._metrics.utterances.labels(job.end_reason or "unknown").inc()
            span = self._utterances[job.utterance_id]
            span.set_attribute("stt.audio_s", round(job.audio_s, 3))
            span.set_attribute("stt.end_reason", job.end_reason or "unknown")
        return self._utterances[job.utterance_id]

    def speculated(self, job: Job, asked: bool = False) -> None:
        """A final answered by its speculation: counted as asked for (its utterance, its end
        reason) unless it was (`asked`: it waited behind the speculation), with no engine
        call of its own."""
        if not asked:
            self.submitted(job)
        self._metrics.speculative_finals.inc()

    def withdrawn(self) -> None:
        """A final's queued decode was taken out unrun: its speculation answered for it."""
        self._metrics.withdrawn_finals.inc()

    def published(self, message: ServerMessage, job: Job | None) -> None:
        """Count what went out; a final (or its error) also closes its utterance span."""
        metrics = self._metrics
        match message:
            case Transcription(is_final=True, utterance_id=utterance_id):
                metrics.transcripts.labels("final").inc()
                if job is not None and job.ended_at is not None:
                    latency_s = time.time() - job.ended_at + job.trailing_silence_s
                    metrics.final_latency.observe(latency_s)
                self._end_utterance(utterance_id)
            case Transcription():
                metrics.transcripts.labels("partial").inc()
            case Interrupt():
                metrics.interrupts.inc()
                self._span.add_event("interrupt", {"stt.utterance_id": message.utterance_id})
            case Error(code=code, utterance_id=utterance_id):
                metrics.errors.labels(code).inc()
                if utterance_id is not None:
                    span = self._utterances.get(utterance_id)
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, code))
                    self._end_utterance(utterance_id)
            case EagerEndOfTurn() | TurnResumed():
                metrics.turn_events.labels(message.type).inc()
            case SessionClosed():
                pass

    def inference(self, job: Job, outcome: Outcome, wait_s: float, now: float) -> None:
        """Metrics and the ``stt.inference`` span of one engine call, after the fact (the
        scheduler knows nothing of telemetry)."""
        decode = plan(job)
        kind = decode.label
        engine = self._owner.engine_for(decode.engine)
        self._metrics.queue_wait.labels(kind).observe(wait_s)
        inference_s = outcome.inference_s if isinstance(outcome, Transcript) else 0.0
        attributes: Attributes = {
            "stt.session_id": self._session.session_id,
            "stt.speaker_id": str(self._session.speaker_id or ""),
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
        parent = self._utterances.get(job.utterance_id, self._span)
        end_ns = int(now * 1e9)
        span = self._owner.tracer.start_span(
            "stt.inference",
            context=trace.set_span_in_context(parent),
            start_time=end_ns - int((inference_s + wait_s) * 1e9),
            attributes=attributes,
        )
        if not isinstance(outcome, Transcript):
            span.record_exception(outcome)
            span.set_status(Status(StatusCode.ERROR, outcome.code))
        span.end(end_time=end_ns)

    def closed(self, reason: str) -> None:
        """The session closed: its spans end (an utterance still open held no words)."""
        for utterance_id in list(self._utterances):
            self._end_utterance(utterance_id)
        self._span.set_attribute("stt.close_reason", reason)
        self._span.end()
        self._metrics.sessions_closed.labels(reason).inc()

    def _end_utterance(self, utterance_id: int) -> None:
        span = self._utterances.pop(utterance_id, None)
        if span is not None:
            span.end()
