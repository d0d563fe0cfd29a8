"""Durable mode's acknowledgements against a real nats-server with JetStream: what is held is
acknowledged once settled, and an acknowledgement that fails is logged and counted."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from stt_worker.config import Settings, load_settings
from stt_worker.core.protocol import Start, encode_client_message
from stt_worker.runtime.delivery import DurableDelivery
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.telemetry.metrics import Metrics
from tests.helpers import until

LOGGER = "stt_worker.runtime.delivery"
FORMAT = {"sample_rate_hz": 16_000, "channels": 1}


@pytest.fixture
async def js_url(tmp_path) -> AsyncIterator[str]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        yield server.url


class Durable:
    """A `DurableDelivery` bound to its own connection, and the messages it delivers."""

    def __init__(self, settings: Settings, nc: Client) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = Metrics()
        self.delivery = DurableDelivery(settings, self.metrics)
        self.received: asyncio.Queue[Msg] = asyncio.Queue(maxsize=16)

    @classmethod
    async def start(cls, url: str) -> Durable:
        settings = load_settings(nats_url=url, durable=True, otel_enabled=False)
        self = cls(settings, await nats.connect(url))
        await self.delivery.subscribe(self.nc, settings.stream_subjects(), self.received.put)
        return self

    async def next_start(self, publisher: Client) -> Msg:
        """Publish a ``start`` for a new session and take its delivery."""
        subject = f"ai.voice.stream.acks-{uuid.uuid4().hex[:8]}"
        await publisher.publish(subject, encode_client_message(Start()))
        msg = await asyncio.wait_for(self.received.get(), 10)
        assert await self.delivery.admit(msg)
        return msg

    def failures(self, operation: str) -> float | None:
        registry = self.metrics.registry
        return registry.get_sample_value("stt_ack_failures_total", {"operation": operation})

    async def stored(self) -> int:
        info = await self.nc.jetstream().stream_info(self.settings.jetstream_stream)
        return info.state.messages

    async def empty(self) -> bool:
        return await self.stored() == 0


async def test_what_a_session_held_is_acknowledged_when_it_closes(js_url):
    durable = await Durable.start(js_url)
    publisher = await nats.connect(js_url)
    try:
        msg = await durable.next_start(publisher)
        acks = durable.delivery.session_acks()
        await acks.hold(Start(), msg, now=0.0, **FORMAT)
        await durable.delivery.sweep([acks], now=1e9)  # held long enough: reported in progress
        assert await durable.stored() == 1  # a held `start` stays until the session closes
        await acks.release("end", 0)
        await until(durable.empty, 10)  # acknowledged: the work queue lets it go
        assert durable.failures("ack") == 0
        assert durable.failures("in_progress") == 0
    finally:
        await publisher.close()
        await durable.nc.close()


async def test_a_failed_acknowledgement_is_logged_and_counted(js_url, caplog):
    """The connection closes under held messages: `ack` and `in_progress` raise in nats-py,
    and each failure is reported with its operation and stream sequence."""
    durable = await Durable.start(js_url)
    publisher = await nats.connect(js_url)
    try:
        held = await durable.next_start(publisher)
        rejected = await durable.next_start(publisher)
        acks = durable.delivery.session_acks()
        await acks.hold(Start(), held, now=0.0, **FORMAT)
        await durable.nc.close()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await durable.delivery.sweep([acks], now=1e9)
            await acks.release("end", 0)
            await durable.delivery.reject(rejected)
    finally:
        await publisher.close()
    assert durable.failures("in_progress") == 1
    assert durable.failures("ack") == 2
    reports = [
        (r.levelno, r.operation, r.stream_seq, r.getMessage())
        for r in caplog.records
        if r.name == LOGGER
    ]
    held_seq = held.metadata.sequence.stream
    rejected_seq = rejected.metadata.sequence.stream
    assert [(level, operation, seq) for level, operation, seq, _ in reports] == [
        (logging.WARNING, "in_progress", held_seq),
        (logging.WARNING, "ack", held_seq),
        (logging.WARNING, "ack", rejected_seq),
    ]
    for _, operation, seq, text in reports:
        assert f"{operation} of stream sequence {seq} failed" in text
