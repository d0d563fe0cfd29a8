"""The worker's NATS connection reads its socket in large pieces (`runtime/read_size.py`):
bytes that piled up while the loop was busy come to the protocol parser 256 KiB at a time,
not in nats-py's 32 KiB reads."""

from __future__ import annotations

import time

import nats

from stt_worker.config import load_settings
from stt_worker.runtime.connection import TOOL, connect
from stt_worker.runtime.read_size import READ_BYTES
from tests.helpers import count_reads

NATS_PY_READ_BYTES = 32 * 1024


async def test_a_backlog_reaches_the_parser_in_reads_wider_than_nats_py_makes(nats_url):
    client = await connect(load_settings(nats_url=nats_url), "pytest-read-size", TOOL)
    publisher = await nats.connect(nats_url, name="pytest-read-size-publisher")
    try:
        reads = count_reads(client)
        received: list[int] = []

        async def on_message(msg) -> None:
            received.append(len(msg.data))

        await client.subscribe("read-size.backlog", cb=on_message)
        await client.flush()
        for _ in range(16):
            await publisher.publish("read-size.backlog", b"\1" * 100_000)
        await publisher.flush()
        # The loop kept busy on purpose: the 1.6 MB pile up in the socket meanwhile.
        time.sleep(0.3)  # noqa: ASYNC251
        await client.flush(timeout=10)

        assert received == [100_000] * 16  # every message whole and in order
        assert max(reads) > NATS_PY_READ_BYTES
        assert max(reads) <= READ_BYTES
    finally:
        await publisher.close()
        await client.close()
