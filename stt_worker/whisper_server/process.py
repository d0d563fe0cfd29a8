"""The whisper-server as a process: `app_for` (the app as `Settings` configure it) and
`run_server` (uvicorn until SIGTERM, then a drain)."""

from __future__ import annotations

import ipaddress
import logging
import math
import signal

import uvicorn
from starlette.applications import Starlette

from stt_worker.config import Settings
from stt_worker.core.errors import SttError
from stt_worker.engines.base import Engine
from stt_worker.whisper_server.app import create_app

logger = logging.getLogger(__name__)


def app_for(settings: Settings, engine: Engine) -> Starlette:
    """The app configured by `settings`: the `WHISPER_SERVER_*` limits and `WHISPER_API_KEY`."""
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
    )


def api_key(settings: Settings) -> str | None:
    """The key requests must carry; an empty `WHISPER_API_KEY` (a blank Secret entry) is
    none, as for the other secrets."""
    key = settings.whisper_api_key
    return (key.get_secret_value() or None) if key is not None else None


def run_server(settings: Settings, engine: Engine, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within `drain_timeout_s`."""
    app = app_for(settings, engine)
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
