"""nats-py's TCP transport, reading the socket itself so that a shed payload is dropped in the
kernel, never copied into the worker.

Beside a flood of maximal chunks the worker takes in about 1 GB/s that it sheds unread
(`shed_parser.ShedParser`). Through nats-py's transport each of those bytes is copied three
times on the event loop (the socket read, asyncio's stream buffer, and out of it again) and
each read goes once round the loop's callbacks; a bare socket read of the same bytes costs
about half, and a read with ``MSG_TRUNC``, which on a Linux TCP socket discards the bytes in
the kernel, a third less again (`python -m bench.read_size`).

So, on a plain connection on Linux (TLS, and other systems, stay nats-py's), once the
handshake is over the transport stops asyncio's reads of the socket and reads a duplicate of
its descriptor itself: when the parser says the next bytes are the rest of a shed payload
(`ShedParser.dropping`) they are discarded with ``MSG_TRUNC``; after a large discard the next
read is small, enough for the next control line, so that a flood's next payload is discarded
too instead of read (after a short one it is full-size: payloads of a few KB fit many to a
read). Writes, TLS, the handshake and reconnects stay as nats-py does them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from typing import Any, Protocol

from nats.aio.transport import TcpTransport

# ``MSG_TRUNC`` discards a TCP socket's bytes unread on Linux only; elsewhere asyncio reads.
_TAKES_SOCKET = sys.platform.startswith("linux")
# What a read asks for right after a discard of at least `_LARGE_DISCARD` bytes: the next
# control line (~60 bytes) and a little payload; the read after it asks for the full size.
PEEK_BYTES = 4096
_LARGE_DISCARD = 64 * 1024
# Bytes left unread when the connection closes make Linux reset it, losing what was still to
# send (the last publishes): discarded first, up to this much.
_CLOSE_DISCARD_BYTES = 16 << 20
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
        self.parser = parser
        self._sock: socket.socket | None = None  # our duplicate, once we read the socket
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._scratch = bytearray(_DISCARD_BYTES)  # never written: `MSG_TRUNC` wants its length
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
        discarded = 0
        while True:
            self._check_open(sock)
            try:
                if drop := self.parser.dropping():
                    nbytes = sock.recv_into(
                        self._scratch, min(drop, _DISCARD_BYTES), socket.MSG_TRUNC
                    )
                    if nbytes == 0:
                        self._eof = True
                        return b""
                    self.parser.dropped(nbytes)
                    self.discarded += nbytes
                    discarded += nbytes
                    continue
                # A large payload discarded: the next is likely one too, read just its line.
                data = sock.recv(PEEK_BYTES if discarded >= _LARGE_DISCARD else buffer_size)
            except (BlockingIOError, InterruptedError):
                await self._readable(sock)
                continue
            self._eof = not data
            return data

    def at_eof(self) -> bool:
        return self._eof if self._sock is not None else super().at_eof()

    def close(self) -> None:
        self._release(discard=True)
        super().close()

    def _check_open(self, sock: socket.socket) -> None:
        """Raise where asyncio's reads would: our socket closed under a read (`close`), or
        asyncio's transport lost the connection (a write failed), which our duplicate of the
        socket would otherwise keep open. Checked at each read and wake-up: a read waiting on
        a silent connection learns of it with the next byte, or from the client's next write
        (nats-py's ping, every two minutes at most)."""
        if self._sock is not sock:
            raise asyncio.CancelledError  # the read loop ends, as nats-py ends it on a close
        writer = self._io_writer
        if writer is not None and writer.transport.is_closing():
            reader = self._io_reader
            error = reader.exception() if reader is not None else None
            self._release()
            raise error or ConnectionResetError("nats: connection closed")

    def _take_socket(self) -> bool:
        """Read the socket ourselves from now on, if the connection is plain and asyncio has
        handed over all it read: True when so."""
        reader, writer = self._io_reader, self._io_writer
        if not _TAKES_SOCKET or reader is None or writer is None:
            return False
        if writer is not self._bare_io_writer:
            return False  # TLS: asyncio's reads
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing() or reader.at_eof() or reader.exception():
            return False
        transport.pause_reading()
        # Bytes asyncio read before the pause go first: the stream reader hands them out,
        # which may resume its reads (its own flow control), so the pause is made again at
        # the next read. Once it is empty, nothing reads it again.
        if getattr(reader, "_buffer", b"?"):
            return False
        duplicate = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        duplicate.setblocking(False)
        self._sock, self._eof = duplicate, False
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

    def _release(self, *, discard: bool = False) -> None:
        """Close our duplicate (the connection closes once asyncio's socket closes too); a
        read waiting on it ends with `CancelledError`, as nats-py ends its read loop on a
        close. With `discard`, first drop what waits unread (see `_CLOSE_DISCARD_BYTES`)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._waiter is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._waiter.cancel()
        if discard:
            _discard_waiting(sock, self._scratch)
        sock.close()
        self._eof = False


def _discard_waiting(sock: socket.socket, scratch: bytearray) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) waits
        for _ in range(_CLOSE_DISCARD_BYTES // len(scratch)):
            if not sock.recv_into(scratch, len(scratch), socket.MSG_TRUNC):
                return


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
