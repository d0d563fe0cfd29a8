"""OpenTelemetry tracing: the OTLP exporters (a collector, HyperDX or both) and W3C trace
context carried in NATS message headers.

The exporters read the standard ``OTEL_EXPORTER_OTLP_*`` variables themselves (endpoint,
headers, timeout, certificates, compression); `Settings` picks the protocol and says whether
tracing is on. Export runs on the SDK's batch thread, never on the event loop, and a
collector that cannot be reached is logged once, not once per batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stt_worker.config import Settings

logger = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
# The exporters log every failed batch (and every retry) themselves: `_QuietExporter` says it
# once instead.
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp", "opentelemetry.sdk.trace.export")


def create_tracer_provider(settings: Settings) -> tuple[TracerProvider, list[QuietExporter]]:
    """A provider exporting to every configured destination (none when tracing is off)."""
    exporters = _exporters(settings)
    if not exporters:
        return TracerProvider(), []
    for name in _EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES (k8s pod name, namespace, ...).
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporters


def _exporters(settings: Settings) -> list[QuietExporter]:
    exporters: list[QuietExporter] = []
    if settings.hyperdx_enabled:
        key = settings.hyperdx_api_key.get_secret_value() if settings.hyperdx_api_key else ""
        if not key:
            logger.error("HYPERDX_ENABLED is set but HYPERDX_API_KEY is empty: HyperDX is off")
        else:
            endpoint = settings.hyperdx_otlp_endpoint.rstrip("/") + "/v1/traces"
            exporters.append(
                QuietExporter(_http_exporter(endpoint, {"authorization": key}), "HyperDX", endpoint)
            )
    # With HyperDX on, the generic exporter runs only when an endpoint is set explicitly, so a
    # HyperDX-only deployment does not also retry a collector that is not there.
    generic = settings.otel_enabled and (
        not settings.hyperdx_enabled or settings.otel_exporter_otlp_endpoint
    )
    if generic:
        protocol = settings.otel_exporter_otlp_protocol
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            inner: SpanExporter = GrpcExporter()
        elif protocol == "http/protobuf":
            inner = _http_exporter()
        else:
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use 'grpc' or 'http/protobuf'"
            )
        target = settings.otel_exporter_otlp_endpoint or f"the default {protocol} endpoint"
        exporters.append(QuietExporter(inner, "OTLP", target))
    return exporters


def _http_exporter(
    endpoint: str | None = None, headers: Mapping[str, str] | None = None
) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers) if headers else None)


class QuietExporter(SpanExporter):
    """Wraps an exporter: logs the first failure and the recovery, nothing in between; at exit
    `abort` cuts short the retries of a destination that does not answer."""

    def __init__(self, inner: SpanExporter, name: str, target: str) -> None:
        self._inner = inner
        self._name = name
        self._target = target  # never holds a key: keys travel in headers
        self._failing = False
        self._stopped = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the batch thread
            logger.debug("span export raised %r", exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE and not self._failing:
            self._failing = True
            logger.warning(
                "cannot export traces to %s (%s); spans are dropped until it answers, and "
                "further failures are not logged",
                self._name,
                self._target,
            )
        elif result is SpanExportResult.SUCCESS and self._failing:
            self._failing = False
            logger.info("trace export to %s works again", self._name)
        return result

    def abort(self) -> None:
        """Stop now: an export waiting to retry returns at once, later ones are skipped."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._inner.shutdown()  # wakes the exporter's retry back-off

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def shutdown_tracing(
    provider: TracerProvider, exporters: Sequence[QuietExporter], timeout_s: float
) -> None:
    """Flush what is queued within `timeout_s`, then stop the export threads."""
    # The SDK's force_flush exports in the calling thread and sits out the exporter's
    # whole retry schedule (about 7 s against a closed port), whatever its timeout says;
    # so flush on a side thread and cut the retries short if it takes too long.
    flusher = threading.Thread(target=provider.force_flush, name="otel-flush", daemon=True)
    flusher.start()
    flusher.join(timeout_s)
    if flusher.is_alive():
        for exporter in exporters:
            exporter.abort()
        flusher.join()
    provider.shutdown()


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent a publisher sent (`traceparent`), or None."""
    if not headers or "traceparent" not in headers:
        return None
    context = _PROPAGATOR.extract(headers)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def inject(span: trace.Span) -> dict[str, str] | None:
    """Headers carrying `span` as the parent of whatever consumes the message."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None
