"""The whisper-server as a process: `app_for` (the app as `Settings` configure it) and
`run_server` (uvicorn until SIGTERM, then a drain, then the last spans flushed).

Spans are exported as the worker's are (`OTEL_*`, `HYPERDX_*`), under `service.name`
`whisper-server` unless `OTEL_SERVICE_NAME` says otherwise."""

from __future__ import annotations

import ipaddress
import logging
import math
import signal

import uvicorn
from opentelemetry import trace
from starlette.applications import Starlette

from stt_worker.config import Settings
from stt_worker.core.errors import SttError
from stt_worker.engines.base import Engine
from stt_worker.runtime.telemetry import SHUTDOWN_FLUSH_MS
from stt_worker.runtime.telemetry.tracing import create_tracer_provider, shutdown_tracing
from stt_worker.whisper_server.app import create_app
from stt_worker.whisper_server.observability import TRACER_NAME

SERVICE_NAME = "whisper-server"

logger = logging.getLogger(__name__)


def app_for(settings: Settings, engine: Engine, tracer: trace.Tracer | None = None) -> Starlette:
    """The app configured by `settings`: the `WHISPER_SERVER_*` limits, `WHISPER_API_KEY`
    and `STT_BUILD_COMMIT`; spans go to `tracer` (none: made, not exported)."""
    return create_app(
        engine,
        model_name=engine.info.model,
        max_concurrency=settings.whisper_server_max_concurrency,
        max_queue=settings.whisper_server_max_queue,
        max_upload_bytes=settings.whisper_server_max_upload_bytes,
        max_audio_s=settings.whisper_server_max_audio_s,
        max_uploads=settings.whisper_server_max_uploads,
        body_timeout_s=settings.whisper_server_body_timeout_s,
        api_key=api_key(settings),
        tracer=tracer,
        commit=settings.build_commit,
    )


def api_key(settings: Settings) -> str | None:
    """The key requests must carry; an empty `WHISPER_API_KEY` (a blank Secret entry) is
    none, as for the other secrets."""
    key = settings.whisper_api_key
    return (key.get_secret_value() or None) if key is not None else None


def run_server(settings: Settings, engine: Engine, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within `drain_timeout_s`."""
    if "otel_service_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"otel_service_name": SERVICE_NAME})
    provider, exporters = create_tracer_provider(settings)
    app = app_for(settings, engine, provider.get_tracer(TRACER_NAME))
    if api_key(settings) is None and not is_loopback(host):
        logger.warning(
            "whisper server on %s without WHISPER_API_KEY: anyone who can reach the port "
            "can use it",
            host,
        )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,  # our logging setup (the CLI's) formats uvicorn's records too
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which the default
    # handler turns into death by signal; a clean drain should exit 0, as the worker does.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutdown_tracing(provider, exporters, SHUTDOWN_FLUSH_MS / 1000)
    if not server.started:
        # uvicorn logs a failed lifespan (e.g. the warm-up) and returns normally.
        raise SttError("the whisper server did not start; see the log above")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
