"""What every process we run exposes beside its own metrics: which build it is, and the
standard process, platform and garbage-collector collectors of the Prometheus client.

`*_build_info` follows the Prometheus convention: a gauge at 1 whose labels name the build,
so a dashboard can join any series on it (`* on(instance) group_left(version) ...`) and a
rollout shows as the label changing. The collectors are registered into the given registry,
not the client's global one, so several workers (or servers) in one test process stay apart.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from stt_worker import __version__

UNKNOWN_COMMIT = "unknown"


def register_process_metrics(registry: CollectorRegistry, *, build_info: str, commit: str) -> None:
    """`process_*`, `python_info`, `python_gc_*` and `{build_info}{version, commit} 1`."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        build_info,
        "Always 1; the labels name the running build (version, source commit)",
        ["version", "commit"],
        registry=registry,
    )
    info.labels(__version__, commit or UNKNOWN_COMMIT).set(1)
