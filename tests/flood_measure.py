"""The slow-consumer measurement of docs/operations.md (Admission and fair shares).

A real nats-server with monitoring on, a real `stt-streaming serve` process, four honest
sessions streaming a clip at real time, and one nats-py client in its own process publishing
tiny `state_change` messages as fast as it can. Samples the server's view of the worker's
connection (pending bytes) and prints, as one JSON line, what the server, the honest sessions
and the abuser saw.

Not a test (it takes a minute and a core for the flooder): run it by hand from the tree to
measure, as ``PYTHONPATH=. python -m tests.flood_measure 15`` (flood seconds; 0 for the
baseline).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.request

import nats

from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import stream_file
from tests.helpers import SPEECH_DIR, Inbox
from tests.worker_process import WorkerProcess

CLIP = "lj_LJ001-0006.wav"  # 5.7 s
HONEST = [f"honest-{i}" for i in range(4)]

# The flooder, run as `python -c FLOODER URL SECONDS`: prints messages sent and their rate.
FLOODER = r"""
import asyncio, sys, time, msgpack, nats
async def main():
    nc = await nats.connect(sys.argv[1], pending_size=64 * 1024 * 1024)
    states = ("responding", "listening")
    data = [msgpack.packb({"type": "state_change", "state": s}) for s in states]
    end = time.monotonic() + float(sys.argv[2])
    sent, started = 0, time.monotonic()
    while time.monotonic() < end:
        for _ in range(1000):
            await nc.publish("ai.voice.stream.abuser", data[sent & 1])
            sent += 1
    await nc.flush(timeout=60)
    print(sent, sent / (time.monotonic() - started), flush=True)
    await nc.close()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def monitor(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as reply:
        return json.load(reply)


async def sample_pending(port: int, samples: list[int], done: asyncio.Event) -> None:
    """The largest pending bytes the server holds for any connection (the worker's)."""
    while not done.is_set():
        conns = await asyncio.to_thread(monitor, port, "connz?subs=0")
        samples.append(max((c.get("pending_bytes", 0) for c in conns["connections"]), default=0))
        await asyncio.sleep(0.25)


async def honest(nc, inbox: Inbox, session: str, delay_s: float) -> float | None:
    """Seconds from the end of the file to `session_closed`; None if it never closed."""
    await asyncio.sleep(delay_s)
    await stream_file(nc, session, SPEECH_DIR / CLIP, speed=1.0)
    sent = time.monotonic()
    try:
        await inbox.until_closed(within_s=60)
    except TimeoutError:
        return None
    return time.monotonic() - sent


def of_type(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m.get("type") == kind]


async def measure(flood_s: float) -> dict:
    port = free_port()
    async with (
        NatsServer(extra_args=("-m", str(port))) as server,
        WorkerProcess({"NATS_URL": server.url}) as worker,
    ):
        nc = await nats.connect(server.url)
        abuser = await Inbox.open(nc, "abuser")
        inboxes = {s: await Inbox.open(nc, s) for s in HONEST}
        samples: list[int] = [0]
        done = asyncio.Event()
        sampler = asyncio.create_task(sample_pending(port, samples, done))
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOODER, server.url, str(flood_s),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        latencies = await asyncio.gather(
            *(honest(nc, inboxes[s], s, i * 1.5) for i, s in enumerate(HONEST))
        )
        out, _ = await flooder.communicate()
        await asyncio.sleep(2)
        done.set()
        await sampler
        varz = monitor(port, "varz")
        await nc.close()
    sent, rate = out.decode().split()
    received = [m for s in HONEST for m in inboxes[s].received]
    abuser_errors = of_type(abuser.received, "error")
    return {
        "flood_s": flood_s,
        "flood_messages": int(sent),
        "flood_rate_per_s": round(float(rate)),
        "server_slow_consumers": varz.get("slow_consumers"),
        "max_pending_bytes_at_server": max(samples),
        "worker_disconnected": any("disconnected" in line for line in worker.log),
        "honest_sessions_closed": sum(x is not None for x in latencies),
        "honest_end_to_closed_s": [None if x is None else round(x, 2) for x in latencies],
        "honest_finals": sum(1 for m in of_type(received, "transcript") if m.get("is_final")),
        "honest_errors": [m.get("code") for m in of_type(received, "error")],
        "abuser_errors": len(abuser_errors),
        "abuser_error_codes": sorted({m.get("code") for m in abuser_errors}),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0))))
