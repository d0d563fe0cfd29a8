"""``serve`` and ``whisper-server``: a service in the foreground, configured by the environment
and the few options the command line overrides."""

from __future__ import annotations

import asyncio
import logging

from stt_worker.config import load_settings
from stt_worker.engines import create_engine, create_partial_engine
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.telemetry.logs import setup_logging
from stt_worker.runtime.worker import Worker
from stt_worker.tools.options import given

logger = logging.getLogger(__name__)


def serve_worker(
    *,
    engine_kind: str | None,
    model: str | None,
    device: str | None,
    nats_url: str | None,
) -> int:
    """The worker until SIGTERM; `engine_kind` None is ``STT_ENGINE``'s."""
    settings = load_settings(
        **given(nats_url=nats_url, whisper_model_size=model, whisper_device=device)
    )
    setup_logging(settings.log_level, settings.log_format)
    engine = create_engine(settings, engine_kind)
    partial_engine = create_partial_engine(settings, engine_kind)
    for each in filter(None, (engine, partial_engine)):
        logger.info("engine %s, model %s on %s", each.info.name, each.info.model, each.info.device)
    telemetry = Telemetry.from_settings(settings)
    try:
        asyncio.run(_run_worker(Worker(settings, engine, partial_engine, telemetry)))
    finally:
        telemetry.shutdown()
    return 0


async def _run_worker(worker: Worker) -> None:
    try:
        await worker.run()
    finally:
        for engine in filter(None, (worker.engine, worker.partial_engine)):
            await engine.aclose()


def serve_whisper(
    *,
    engine_kind: str,
    host: str | None,
    port: int | None,
    model: str | None,
    device: str | None,
) -> int:
    """Our OpenAI-compatible Whisper HTTP service until SIGTERM."""
    from stt_worker.whisper_server import run_server  # needs the local extra

    settings = load_settings(
        **given(
            whisper_server_host=host,
            whisper_server_port=port,
            whisper_model_size=model,
            whisper_device=device,
        )
    )
    setup_logging(settings.log_level, settings.log_format)
    engine = create_engine(settings, engine_kind)
    logger.info(
        "engine %s, model %s on %s", engine.info.name, engine.info.model, engine.info.device
    )
    try:
        run_server(
            settings, engine, host=settings.whisper_server_host, port=settings.whisper_server_port
        )
    finally:
        engine.close()
    return 0
