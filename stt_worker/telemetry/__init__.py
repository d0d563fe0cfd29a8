"""Telemetry of a worker: its tracer, its Prometheus metrics, and how both are shut down."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from stt_worker.config import Settings
from stt_worker.telemetry.metrics import Metrics
from stt_worker.telemetry.tracing import QuietExporter, create_tracer_provider

TRACER_NAME = "stt_worker"
# At exit, spans still queued get this long to leave (a collector that is down is not waited
# for: QuietExporter gives up at once once it has failed).
SHUTDOWN_FLUSH_MS = 5_000


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
        if not exporters:
            return cls()
        return cls(provider.get_tracer(TRACER_NAME), Metrics(), provider, exporters)

    def shutdown(self) -> None:
        """Flush what is queued (bounded), then stop the export threads."""
        if self.provider is None:
            return
        for exporter in self.exporters:
            exporter.closing()
        self.provider.force_flush(SHUTDOWN_FLUSH_MS)
        self.provider.shutdown()
