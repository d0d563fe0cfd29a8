"""Fixtures that run the real worker in the test's event loop, on the shared nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stt_worker.config import load_settings
from stt_worker.engines import create_engine
from stt_worker.engines.base import Engine
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.worker import Worker


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The bundled tiny.en, loaded once for the whole run (engines are loop-independent)."""
    loaded = create_engine(load_settings())
    yield loaded
    loaded.close()


@pytest.fixture
async def make_worker(nats_url: str, engine: Engine) -> AsyncIterator:
    """Start a worker with settings overrides; every worker is drained when the test ends."""
    running: list[tuple[asyncio.Event, asyncio.Task]] = []
    own_engines: list[Engine] = []

    async def start(
        *,
        return_handles: bool = False,
        engine_factory: object = None,
        telemetry: Telemetry | None = None,
        **overrides: object,
    ):
        settings = load_settings(**{"nats_url": nats_url, **overrides})  # a URL may override
        # `engine_factory(settings)` builds another engine (HTTP, torch) for this worker only.
        worker_engine = engine_factory(settings) if callable(engine_factory) else engine
        if worker_engine is not engine:
            own_engines.append(worker_engine)
        worker = Worker(settings, worker_engine, telemetry=telemetry)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped the worker from starting
        assert worker.ready.is_set(), "worker did not become ready"
        running.append((stop, task))
        return (worker, stop, task) if return_handles else worker

    yield start
    for stop, _ in running:
        stop.set()
    for _, task in running:
        await asyncio.wait_for(task, 60)
    for each in own_engines:
        await each.aclose()


@pytest.fixture
async def worker(make_worker) -> Worker:
    return await make_worker()
