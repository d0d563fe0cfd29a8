"""A worker running in this process, for ``demo`` and ``gateway``: on the engine the command
names, with an in-process whisper-server behind the ``http`` engine when no URL is given."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from stt_worker.config import Settings
from stt_worker.engines import create_engine
from stt_worker.engines.base import Engine
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.worker import Worker

# The engines `demo` and `gateway` offer: `http` is the worker's HTTP engine.
DEMO_ENGINES = ("faster-whisper", "openai-whisper", "http")
_READY_TIMEOUT_S = 180.0


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, engine_kind: str, whisper_url: str | None = None
) -> AsyncIterator[Worker]:
    """A worker in this loop on `engine_kind`'s engine, ready; drained on exit. If the worker
    fails, its TaskGroup cancels the body and raises its error."""
    if "http_port" not in settings.model_fields_set:
        # A demo must not fail because something else holds port 8080.
        settings = settings.model_copy(update={"http_port": 0})
    async with _engine(settings, engine_kind, whisper_url) as engine:
        worker = Worker(settings, engine)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(worker.run(stop))
            try:
                async with asyncio.timeout(_READY_TIMEOUT_S):
                    await worker.ready.wait()
                yield worker
            finally:
                stop.set()


@contextlib.asynccontextmanager
async def _engine(
    settings: Settings, engine_kind: str, whisper_url: str | None
) -> AsyncIterator[Engine]:
    """The engine `engine_kind` names; `http` talks to `whisper_url` or to a whisper-server
    started here on a local faster-whisper engine."""
    async with contextlib.AsyncExitStack() as stack:
        if engine_kind == "http":
            url = whisper_url or await stack.enter_async_context(
                _in_process_whisper_server(settings)
            )
            settings = settings.model_copy(update={"whisper_url": url})
        # Off the loop: loading a model takes about 1 s (the first openai-whisper run also
        # converts the bundled model once into the cache).
        engine = await asyncio.to_thread(create_engine, settings, engine_kind)
        stack.push_async_callback(engine.aclose)  # the HTTP client must close on its own loop
        print(f"engine   {engine.info.name} {engine.info.model} on {engine.info.device}")
        yield engine


@contextlib.asynccontextmanager
async def _in_process_whisper_server(settings: Settings) -> AsyncIterator[str]:
    """`whisper-server` on faster-whisper, served in this loop on 127.0.0.1 and a port the OS
    picks; yields its base URL and stops it on exit."""
    # Imported here: the server needs the local extra, which the HTTP image leaves out.
    from stt_worker.whisper_server import app_for

    engine = await asyncio.to_thread(create_engine, settings, "faster-whisper")
    try:
        async with serving_in_loop(app_for(settings, engine)) as url:
            info = engine.info
            print(f"whisper  {info.name} {info.model} on {info.device} at {url}  (in-process)")
            yield url
    finally:
        engine.close()
