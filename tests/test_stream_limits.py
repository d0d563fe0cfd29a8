"""Durable mode's per-subject stream limit (STT_STREAM_MAX_MSGS_PER_SUBJECT) on a real
nats-server with JetStream: a session's subject past the limit is refused by the server
itself (a JetStream publish gets an error, a core publish is dropped), other sessions' subjects
are not, and a slot frees once the worker acknowledges a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError

from stt_worker.config import Settings, load_settings
from stt_worker.core.protocol import StateChange, encode_client_message
from stt_worker.runtime.delivery import DurableDelivery, ensure_work_queue
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.telemetry.metrics import Metrics
from tests.helpers import until

LIMIT = 5
PAYLOAD = encode_client_message(StateChange(state="listening"))


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[NatsServer]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        yield server


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(server.url)
    yield client
    await client.close()


def _settings(url: str, limit: int) -> Settings:
    return load_settings(
        nats_url=url, durable=True, otel_enabled=False, stream_max_msgs_per_subject=limit
    )


def _subject(settings: Settings, session: str) -> str:
    return f"{settings.stream_subject.removesuffix('*')}{session}"


async def _stored(nc: Client, settings: Settings, subject: str) -> int:
    info = await nc.jetstream().stream_info(settings.jetstream_stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def _stored_is(nc: Client, settings: Settings, subject: str, count: int) -> bool:
    return await _stored(nc, settings, subject) == count


async def test_a_subject_past_the_limit_is_refused_by_the_server_and_others_are_not(server, nc):
    settings = _settings(server.url, LIMIT)
    js = nc.jetstream()
    await ensure_work_queue(js, settings)
    flood, honest = _subject(settings, "flood"), _subject(settings, "honest")
    for _ in range(LIMIT):
        await js.publish(flood, PAYLOAD)
    with pytest.raises(APIError, match=r"(?i)maximum messages per subject"):
        await js.publish(flood, PAYLOAD)
    for _ in range(50):  # core NATS: dropped by the server, nobody told
        await nc.publish(flood, PAYLOAD)
    await nc.flush()
    assert await _stored(nc, settings, flood) == LIMIT
    # Another session's subject is untouched by the flood.
    for _ in range(LIMIT):
        await js.publish(honest, PAYLOAD)
    assert await _stored(nc, settings, honest) == LIMIT


async def test_the_limit_bounds_a_backlog_not_a_session_once_acknowledged_it_frees(server, nc):
    settings = _settings(server.url, LIMIT)
    delivery = DurableDelivery(settings, Metrics())
    received: asyncio.Queue[Msg] = asyncio.Queue()
    worker = await nats.connect(server.url)
    try:
        await delivery.subscribe(worker, settings.stream_subjects(), received.put)
        js = nc.jetstream()
        flood = _subject(settings, "flood")
        for _ in range(LIMIT):
            await js.publish(flood, PAYLOAD)
        for _ in range(LIMIT):  # the worker refuses them: acknowledged, gone from the queue
            await delivery.reject(await asyncio.wait_for(received.get(), 5))
        await worker.flush()
        # The server removes acknowledged messages from a work queue asynchronously: on a
        # loaded machine the next publish could still meet a full subject.
        await until(lambda: _stored_is(nc, settings, flood, 0), within_s=10)
        await js.publish(flood, PAYLOAD)
        assert await _stored(nc, settings, flood) == 1
    finally:
        await worker.close()


async def test_zero_sets_no_limit(server, nc):
    settings = _settings(server.url, 0)
    js = nc.jetstream()
    await ensure_work_queue(js, settings)
    flood = _subject(settings, "flood")
    for _ in range(LIMIT * 3):
        await js.publish(flood, PAYLOAD)
    assert await _stored(nc, settings, flood) == LIMIT * 3
    config = (await js.stream_info(settings.jetstream_stream)).config
    assert config.max_msgs_per_subject == -1 and not config.discard_new_per_subject
