"""The shedding transport (`runtime/shed_transport.py`) on a real nats-server: a held
subject's large payloads are discarded in the kernel, every other message arrives whole and in
order, and counts stay exact; across a restart of the server it takes the new connection over."""

from __future__ import annotations

import time

import msgpack
import nats
from nats.aio.client import Client

from stt_worker.config import load_settings
from stt_worker.runtime.connection import TOOL, connect
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.shed_transport import ShedTransport
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics
from tests.helpers import count_reads, until

FLOODER = "ai.voice.stream.flood"
HONEST = "ai.voice.stream.honest"
CHUNK = msgpack.packb({"type": "audio_chunk", "audio": b"\x01" * 256_000})
END = msgpack.packb({"type": "end"})


def wire_bytes(subject: str, payload: bytes) -> int:
    return len(b"MSG %s 1 %d\r\n\r\n" % (subject.encode(), len(payload))) + len(payload)


async def shedding_client(url: str) -> tuple[Client, Shedder, list[tuple[str, bytes]]]:
    """The worker's kind of connection, its flooder held for a minute, and what it receives."""
    client = await connect(load_settings(nats_url=url), "pytest-shed-transport", TOOL)
    shedder = Shedder(Metrics(), hold_s=60)
    shedder.install(client)
    assert isinstance(client._transport, ShedTransport)
    received: list[tuple[str, bytes]] = []

    async def on_message(msg) -> None:
        received.append((msg.subject, msg.data))

    await client.subscribe("ai.voice.stream.*", cb=on_message)
    await client.flush()
    shedder.shed(FLOODER)
    return client, shedder, received


async def flood(publisher: Client, chunks: int) -> list[bytes]:
    """`chunks` maximal chunks on the flooder with honest messages between them (one of them
    as large), then the flooder's `end`; the honest payloads, in order."""
    honest = [
        msgpack.packb({"type": "audio_chunk", "audio": bytes(range(256)) * n}) for n in (1, 1000)
    ]
    sent = []
    for i in range(chunks):
        await publisher.publish(FLOODER, CHUNK)
        if i % 7 == 3:
            payload = honest[i % 2] + bytes([i])  # each one different
            await publisher.publish(HONEST, payload)
            sent.append(payload)
    await publisher.publish(FLOODER, END)
    await publisher.flush()
    return sent


async def test_large_shed_payloads_are_discarded_in_the_kernel_and_the_rest_arrives(nats_url):
    client, shedder, received = await shedding_client(nats_url)
    publisher = await nats.connect(nats_url, name="pytest-shed-transport-publisher")
    try:
        sent = await flood(publisher, 200)
        time.sleep(0.2)  # noqa: ASYNC251 - a backlog piles up in the socket, read in wide reads
        sent += await flood(publisher, 200)
        await until(lambda: received and received[-1][0] == FLOODER, within_s=30)

        assert [data for subject, data in received if subject == HONEST] == sent
        assert [data for subject, data in received if subject == FLOODER] == [END, END]
        assert shedder.take(FLOODER) == (400, 400 * wire_bytes(FLOODER, CHUNK))
        transport = client._transport
        assert isinstance(transport, ShedTransport)
        # All but each chunk's first read's worth came as far as the kernel only.
        assert transport.discarded > 0.9 * 400 * len(CHUNK)
        assert client._ps.dropping() == 0
    finally:
        await publisher.close()
        await client.close()


async def test_a_restarted_server_is_read_anew_and_discards_go_on():
    async with NatsServer() as server:
        client, shedder, received = await shedding_client(server.url)
        publisher = await nats.connect(server.url, name="pytest-shed-transport-publisher")
        try:
            sent = await flood(publisher, 30)
            await until(lambda: len(received) == len(sent) + 1, within_s=30)
            transport = client._transport
            before = transport.discarded
            await server.restart()
            await until(lambda: client.is_connected and publisher.is_connected, within_s=30)
            await client.flush()
            sent += await flood(publisher, 30)
            await until(lambda: len(received) == len(sent) + 2, within_s=30)

            assert client._transport is transport  # nats-py reconnects the same transport
            assert [data for subject, data in received if subject == HONEST] == sent
            # Most of them (the first reads of a connection go through asyncio's reader).
            assert transport.discarded - before > 0.5 * 30 * len(CHUNK)
            assert shedder.take(FLOODER) == (60, 60 * wire_bytes(FLOODER, CHUNK))
        finally:
            await publisher.close()
            await client.close()


async def test_a_flood_of_medium_payloads_is_read_many_to_a_read(nats_url):
    """Payloads of a few KB are read whole, many to a read, not one small read each after
    a discard (only a large discard makes the next read small)."""
    client, shedder, received = await shedding_client(nats_url)
    publisher = await nats.connect(nats_url, name="pytest-shed-transport-publisher")
    reads = count_reads(client)
    medium = msgpack.packb({"type": "audio_chunk", "audio": b"\x02" * 9_000})
    try:
        for _ in range(2_000):
            await publisher.publish(FLOODER, medium)
        await publisher.publish(FLOODER, END)
        await publisher.flush()
        time.sleep(0.2)  # noqa: ASYNC251 - the flood waits in the socket and nats-server
        await until(lambda: received and received[-1] == (FLOODER, END), within_s=30)

        assert shedder.take(FLOODER) == (2_000, 2_000 * wire_bytes(FLOODER, medium))
        assert len(reads) < 2_000 / 10, len(reads)
    finally:
        await publisher.close()
        await client.close()


async def test_a_connection_asyncio_lost_is_given_up_at_the_next_read_and_reconnected():
    """asyncio's transport closed under us (as a failed write closes it): our duplicate of
    the socket must not keep the connection alive; the read says so, the client reconnects
    and reads on."""
    async with NatsServer() as server:
        client, _, received = await shedding_client(server.url)
        publisher = await nats.connect(server.url, name="pytest-shed-transport-publisher")
        try:
            await flood(publisher, 1)
            await until(lambda: received, within_s=10)
            transport = client._transport
            assert transport._sock is not None  # reading the socket itself
            errors: list[BaseException] = []
            handle = client._process_op_err

            async def spied(error: BaseException) -> None:
                errors.append(error)
                await handle(error)

            client._process_op_err = spied
            transport._io_writer.transport.abort()
            await publisher.publish(HONEST, b"wakes the read")
            await until(lambda: client.stats["reconnects"] == 1, within_s=10)
            await until(lambda: client.is_connected, within_s=10)
            await client.flush()
            await publisher.publish(HONEST, b"after")
            await until(lambda: received[-1] == (HONEST, b"after"), within_s=10)
            # Our read gave up (not a write that failed later).
            assert "nats: connection closed" in str(errors[0])
        finally:
            await publisher.close()
            await client.close()
