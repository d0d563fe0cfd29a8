"""A sink for `bench.neighbours`' control runs: reads what nats-server delivers on one subject
and discards it.

In a control run the abuser floods a subject the worker does not subscribe to, and this
process drains it, so nats-server and the machine pay for the flood as in the real run while
the worker pays nothing. It speaks the client protocol on a bare socket (CONNECT, SUB, PONG to
the server's PING) and reads 1 MiB at a time without parsing messages: the cheapest reader
there is, so its own CPU is mostly the kernel's copy of the bytes.

    python -m bench.flood_sink --url nats://127.0.0.1:4222 --subject SUBJECT --seconds S

prints ``sinking`` once subscribed, then, after `S` seconds, one JSON line: bytes read, MB/s
and the CPU cores it took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

READ_BYTES = 1 << 20
_PING = b"PING\r\n"


async def sink(url: str, subject: str, seconds: float) -> dict[str, Any]:
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(
        address.hostname or "127.0.0.1", address.port or 4222, limit=READ_BYTES
    )
    info = await reader.readline()
    if not info.startswith(b"INFO "):
        raise ConnectionError(f"{url}: not a NATS server ({info[:40]!r})")
    options = {"verbose": False, "pedantic": False, "name": "stt-neighbours-sink"}
    writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
    writer.write(f"SUB {subject} 1\r\n".encode() + _PING)
    while not (line := await reader.readline()).startswith(b"PONG"):
        if not line or line.startswith(b"-ERR"):
            raise ConnectionError(f"nats-server: {line!r}")
    print("sinking", flush=True)  # subscribed: the parent may start the flood
    received, tail = 0, b""
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(READ_BYTES), left)
        except TimeoutError:
            break
        if not data:
            break
        received += len(data)
        # A PING split across reads is caught by the tail; one found in a payload gets an
        # extra PONG, which the server ignores.
        if _PING in tail + data[:8] or _PING in data:
            writer.write(b"PONG\r\n")
        tail = data[-8:]
    elapsed = time.monotonic() - started
    writer.close()
    return {
        "bytes": received,
        "mb_per_s": round(received / elapsed / 1e6, 2),
        "cores": round((time.process_time() - cpu_started) / elapsed, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(sink(args.url, args.subject, args.seconds))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
