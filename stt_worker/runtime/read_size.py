"""Wider socket reads for nats-py: 256 KiB a read instead of 32 KiB.

nats-py reads its connection `nats.aio.client.DEFAULT_BUFFER_SIZE` (32 KiB) at a time, and its
stream reader stops reading the socket once twice that waits. Each read copies the bytes out
of the stream reader and goes once round the event loop: over a local socket, 32 KiB reads
cost 500-630 ms of CPU per GB read and 256 KiB reads 175-250 ms (`python -m
bench.read_size`). A flood of maximal chunks (hundreds of MB/s that the worker sheds unread,
`shedding.py`) is mostly that cost, and while the worker spends it, honest messages wait in
nats-server's queue. 256 KiB is what asyncio's selector loop asks of a socket per receive:
more gains nothing.
"""

from __future__ import annotations

from nats.aio import client

READ_BYTES = 256 * 1024


def widen() -> None:
    """Read `READ_BYTES` at a time on connections made from now on (a module setting of
    nats-py, read when a client connects and at each read)."""
    client.DEFAULT_BUFFER_SIZE = max(client.DEFAULT_BUFFER_SIZE, READ_BYTES)
