"""Telemetry of a worker: its tracer, its Prometheus metrics, and how both are shut down."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from stt_worker.config import Settings
from stt_worker.runtime.telemetry.metrics import Metrics
from stt_worker.runtime.telemetry.tracing import (
    QuietExporter,
    create_tracer_provider,
    shutdown_tracing,
)

TRACER_NAME = "stt_worker"
# At exit, spans still queued get this long to leave; a collector that has not taken them by
# then is not waited for (its retries are cut short), so a drain is never held up by it.
SHUTDOWN_FLUSH_MS = 2_000


@dataclass(slots=True)
class Telemetry:
    """Metrics always; spans always made but exported only where configured, so trace ids
    (a publisher's or our own) still reach the published headers and the logs."""

    tracer: trace.Tracer = field(default_factory=lambda: TracerProvider().get_tracer(TRACER_NAME))
    metrics: Metrics = field(default_factory=Metrics)
    provider: TracerProvider | None = None
    exporters: list[QuietExporter] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Telemetry:
        provider, exporters = create_tracer_provider(settings)
        metrics = Metrics(commit=settings.build_commit)
        if not exporters:
            return cls(metrics=metrics)
        return cls(provider.get_tracer(TRACER_NAME), metrics, provider, exporters)

    def shutdown(self) -> None:
        """Flush what is queued (bounded), then stop the export threads."""
        if self.provider is not None:
            shutdown_tracing(self.provider, self.exporters, SHUTDOWN_FLUSH_MS / 1000)
