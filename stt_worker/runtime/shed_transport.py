"""nats-py's TCP transport, reading the socket itself so that a shed payload is dropped in the
kernel, never copied into the worker.

Beside a flood of maximal chunks the worker takes in about 1 GB/s that it sheds unread
(`shed_parser.ShedParser`). Through nats-py's transport each of those bytes is copied three
times on the event loop (the socket read, asyncio's stream buffer, and out of it again) and
each read goes once round the loop's callbacks; a bare socket read of the same bytes costs
about half, and a read with ``MSG_TRUNC``, which on a Linux TCP socket discards the bytes in
the kernel, a third less again (`python -m bench.read_size`).

So, on a plain connection (TLS stays nats-py's), once the handshake is over the transport
stops asyncio's reads of the socket and reads a duplicate of its descriptor itself: when the
parser says the next bytes are the rest of a shed payload (`ShedParser.dropping`) they are
discarded with ``MSG_TRUNC``; after a discard the next read is small, enough for the next
control line, so that the flood's next payload is discarded too instead of read. Writes,
TLS, the handshake and reconnects stay as nats-py does them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any, Protocol

from nats.aio.transport import TcpTransport

# Discards the bytes asked (Linux, TCP); elsewhere they are read into a scratch buffer.
_TRUNC = socket.MSG_TRUNC if sys.platform.startswith("linux") else 0
# What a read asks for right after a discard: the next control line (~60 bytes) and a little
# payload; the read after it asks for the full size again.
PEEK_BYTES = 4096
# At most this much is discarded a call: ``recv_into`` wants a buffer as long as it asks,
# even when ``MSG_TRUNC`` never writes to it.
_DISCARD_BYTES = 1 << 20


class Dropper(Protocol):
    """The parser's side: how much of a shed payload is still to come, and that some came."""

    def dropping(self) -> int: ...

    def dropped(self, nbytes: int) -> None: ...


class ShedTransport(TcpTransport):
    """A `TcpTransport` whose reads of a plain connection drop what `parser` sheds."""

    def __init__(self, parser: Dropper) -> None:
        super().__init__()
        self._parser = parser
        self._sock: socket.socket | None = None  # our duplicate, once we read the socket
        self._eof = False
        self._small = False  # the last read ended a discard: the next one is small
        self._waiter: asyncio.Future[None] | None = None
        self._scratch = bytearray(_DISCARD_BYTES)
        self.discarded = 0  # bytes dropped in the kernel, for tests and benchmarks

    @classmethod
    def replacing(cls, old: TcpTransport, parser: Dropper) -> ShedTransport:
        """A transport on `old`'s connection (its reads under way end as they would)."""
        new = cls(parser)
        new._bare_io_reader, new._io_reader = old._bare_io_reader, old._io_reader
        new._bare_io_writer, new._io_writer = old._bare_io_writer, old._io_writer
        return new

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        self._release()  # a reconnect: the next connection is taken over anew
        await super().connect(uri, buffer_size, connect_timeout)

    async def read(self, buffer_size: int) -> bytes:
        sock = self._sock
        if sock is None:
            if not self._take_socket():
                return await super().read(buffer_size)
            sock = self._sock
            assert sock is not None
        # Once round the loop a read, as asyncio's reads go: while the socket has bytes, the
        # read loop would otherwise never let the subscriptions' tasks (admission) run.
        await asyncio.sleep(0)
        while True:
            try:
                if drop := self._parser.dropping():
                    nbytes = sock.recv_into(self._scratch, min(drop, _DISCARD_BYTES), _TRUNC)
                    if nbytes == 0:
                        self._eof = True
                        return b""
                    self._parser.dropped(nbytes)
                    self.discarded += nbytes
                    self._small = True
                    continue
                data = sock.recv(PEEK_BYTES if self._small else buffer_size)
            except (BlockingIOError, InterruptedError):
                await self._readable(sock)
                continue
            self._small = False
            self._eof = not data
            return data

    def at_eof(self) -> bool:
        return self._eof if self._sock is not None else super().at_eof()

    def close(self) -> None:
        self._release()
        super().close()

    def _take_socket(self) -> bool:
        """Read the socket ourselves from now on, if the connection is plain and asyncio has
        handed over all it read: True when so."""
        reader, writer = self._io_reader, self._io_writer
        if reader is None or writer is None or writer is not self._bare_io_writer:
            return False  # not connected, or TLS: asyncio's reads
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing() or reader.at_eof() or reader.exception():
            return False
        transport.pause_reading()  # never resumed: nothing reads this stream reader again
        # Bytes asyncio read before the pause go first; reading them may resume its reads
        # (its own flow control), so the pause is made again at the next read.
        if getattr(reader, "_buffer", b"?"):
            return False
        duplicate = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        duplicate.setblocking(False)
        self._sock, self._eof, self._small = duplicate, False, False
        return True

    async def _readable(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _settle, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._sock is sock:  # else `_release` removed it before closing the socket
                loop.remove_reader(fd)

    def _release(self) -> None:
        """Close our duplicate (the connection closes once asyncio's socket closes too)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._waiter is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._waiter.cancel()  # the read loop ends, as nats-py ends it on a close
        sock.close()
        self._eof = self._small = False


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
