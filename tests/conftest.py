"""Shared fixtures: one real nats-server for the whole run, and a connected client per test.

The server is a plain (sync) session fixture: `NatsServer` drives its process from a thread,
not from an event loop, so it outlives pytest-asyncio's function-scoped loops safely.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from stt_worker.runtime.nats_server import NatsServer

# Every worker a test starts (in process or as a subprocess) serves its probes on a port the
# OS picks, so tests never collide on 8080 with each other or with anything else running.
os.environ.setdefault("STT_HTTP_PORT", "0")
# The suite streams whole clips at full speed (`speed=0`) to be quick; the admission limits
# stay on, with a burst that holds the longest clip. tests/test_admission*.py set their own.
os.environ.setdefault("STT_AUDIO_BURST_S", "600")

# The worker fixtures (`engine`, `make_worker`, `worker`) and the gateway's (`make_gateway`)
# live beside their tests.
pytest_plugins = ["tests.worker_fixtures", "tests.gateway_fixtures"]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, name="pytest", connect_timeout=5)
    yield client
    # close, not drain: a fault-injection test may have left the server down.
    if not client.is_closed:
        await client.close()
