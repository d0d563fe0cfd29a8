"""The whisper-server's metrics and spans: `ServerMetrics` and `Observed`, the outermost
middleware, so that every answer (a 401 or 503 included) is counted and traced.

Metrics (`GET /metrics`, Prometheus text), besides the process collectors and
`stt_whisper_server_build_info{version, commit}` (`runtime/telemetry/build.py`):

    stt_whisper_server_requests_total{route, method, status}
    stt_whisper_server_request_duration_seconds{route, method, status}   request to answer
    stt_whisper_server_inference_duration_seconds                         engine time
    stt_whisper_server_audio_seconds_total                                audio transcribed
    stt_whisper_server_queued, stt_whisper_server_uploading               admission stages

`route` is one of the app's paths or `other` (an unknown path), so scanners cannot grow the
series count.

Spans: a server span per request, `POST /v1/audio/transcriptions`, continuing the caller's
W3C `traceparent` (the worker's HTTP engine sends it), and `whisper.inference` under it for
the decode and the engine call, so one trace runs from the publisher through the worker to
the model.
"""

from __future__ import annotations

import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stt_worker.runtime.telemetry.build import register_process_metrics
from stt_worker.whisper_server.admission import Admission

TRACER_NAME = "stt_worker.whisper_server"
OTHER_ROUTE = "other"
# A health probe takes a millisecond; a transcription up to the audio bound on a CPU.
_SECONDS = (0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_PROPAGATOR = TraceContextTextMapPropagator()


class ServerMetrics:
    """One server's instruments, in a registry of its own."""

    def __init__(self, *, commit: str) -> None:
        self.registry = r = CollectorRegistry()
        register_process_metrics(r, build_info="stt_whisper_server_build_info", commit=commit)
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "stt_whisper_server_requests", "Requests answered", labels, registry=r
        )
        self.request_seconds = Histogram(
            "stt_whisper_server_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "stt_whisper_server_inference_duration_seconds",
            "Engine time per transcription",
            buckets=_SECONDS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "stt_whisper_server_audio_seconds", "Audio transcribed, in seconds", registry=r
        )

    def watch(self, admission: Admission) -> None:
        """The admission stages' occupancy, read at scrape time."""
        queued = Gauge(
            "stt_whisper_server_queued",
            "Requests with their body in, running or waiting for an inference slot",
            registry=self.registry,
        )
        queued.set_function(lambda: admission.queued)
        uploading = Gauge(
            "stt_whisper_server_uploading",
            "Request bodies being received",
            registry=self.registry,
        )
        uploading.set_function(lambda: admission.uploading)


class Observed:
    """ASGI middleware: a server span and the request metrics around every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        tracer: trace.Tracer,
        routes: frozenset[str],
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._tracer = tracer
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method = scope["method"]
        route = scope["path"] if scope["path"] in self._routes else OTHER_ROUTE
        status = 500  # unless an answer starts: an exception before it is a 500
        started = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span = self._tracer.start_span(
            f"{method} {route}",
            context=_PROPAGATOR.extract(_headers(scope)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._app(scope, receive, send_observed)
        except Exception as exc:
            span.record_exception(exc)
            raise
        finally:
            otel_context.detach(token)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            elapsed_s = time.perf_counter() - started
            labels = (route, method, str(status))
            self._metrics.requests.labels(*labels).inc()
            self._metrics.request_seconds.labels(*labels).observe(elapsed_s)


def _headers(scope: Scope) -> dict[str, str]:
    # Only the trace context is read; latin-1 is what HTTP header bytes decode as.
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate")
    }
