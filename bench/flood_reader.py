"""What a reader of a maximal-chunk flood lets the flood cost the machine: one real nats-server,
the `bench.neighbours` abuser publishing 256 KB chunks as fast as it can, and one reader of
them, either the worker's shedding client (the subject held, its payloads discarded in the
kernel: `stt_worker/runtime/shed_transport.py`) or `bench.flood_sink` (1 MiB reads, no
parsing). Per reader: the rate the flood reached, nats-server's CPU per GB and in all, the
abuser's cores.

nats-server holds a publisher back only once its queue for a reader nears `max_pending`, so
the flood goes as fast as the reader reads: a cheaper reader makes the flood faster and
nats-server busier, not the machine quieter. Measured on this 2-core AMD EPYC, 2026-12-05,
four runs of each: the shedding client 1.46-1.87 GB/s, nats-server 608-738 ms of CPU per GB
(0.9-1.1 cores); the sink 0.85-1.26 GB/s, 531-742 ms per GB (0.5-0.7 cores). Informational:
no target.

    .venv/bin/python -m bench.flood_reader [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import psutil
from nats.aio.msg import Msg

from stt_worker.config import load_settings
from stt_worker.evaluation.results import ROOT
from stt_worker.runtime.connection import TOOL, connect
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.shed_transport import ShedTransport
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

SUBJECT = "ai.voice.stream.flood"
READERS = ("shedding client", "sink")
# A reader outlasts the flood by this much; the sink, which cannot be told when it ends,
# also by the abuser's start (a Python process importing the bench: seconds on a loaded CI).
DRAIN_S = 0.5
STARTUP_S = 10.0


async def _module(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )


async def _ignore(msg: Msg) -> None:
    pass


async def shedding_client(url: str, ready: asyncio.Event, done: asyncio.Event) -> int:
    """The worker's kind of connection with the flood's subject held: bytes it shed, until
    `done` (the flood is over)."""
    client = await connect(load_settings(nats_url=url), "stt-flood-reader", TOOL)
    shedder = Shedder(Metrics(), hold_s=3600)
    shedder.install(client)
    if not isinstance(client._transport, ShedTransport):
        raise RuntimeError("the shedding transport is not in place")
    await client.subscribe("ai.voice.stream.*", cb=_ignore)
    await client.flush()
    shedder.shed(SUBJECT)
    ready.set()
    await done.wait()
    await asyncio.sleep(DRAIN_S)  # what nats-server still had queued
    await client.close()
    return shedder.take(SUBJECT)[1]


async def measure(reader: str, seconds: float) -> dict[str, Any]:
    async with NatsServer() as server:
        process = server._process
        assert process is not None
        nats_server = psutil.Process(process.pid)
        ready, done = asyncio.Event(), asyncio.Event()
        lasting = seconds + STARTUP_S + DRAIN_S
        sink = client = None
        if reader == "sink":
            where = ("--url", server.url, "--subject", SUBJECT, "--seconds", str(lasting))
            sink = await _module("bench.flood_sink", *where)
            assert sink.stdout is not None
            await sink.stdout.readline()  # "sinking"
        else:
            client = asyncio.create_task(shedding_client(server.url, ready, done))
            await ready.wait()
        cpu_before, started = nats_server.cpu_times(), time.monotonic()
        abuser = await _module(
            "bench.neighbours",
            *("--abuse", "max_chunks_192k_8ch", "--url", server.url, "--subject", SUBJECT),
            *("--seconds", str(seconds)),
        )
        out, _ = await abuser.communicate()
        cpu_after, elapsed = nats_server.cpu_times(), time.monotonic() - started
        done.set()
        sent = json.loads(out.decode().strip().splitlines()[-1])
        if sink is not None:
            out, _ = await sink.communicate()
            read = json.loads(out.decode().strip().splitlines()[-1])["bytes"]
        else:
            assert client is not None
            read = await client
    cpu_s = sum(cpu_after[:2]) - sum(cpu_before[:2])
    return {
        "reader": reader,
        "flood_mb_per_s": sent["mb_per_s"],
        "read_gb": round(read / 1e9, 2),
        "nats_server_cpu_ms_per_gb": round(1000 * cpu_s / (read / 1e9)),
        "nats_server_cores": round(cpu_s / elapsed, 2),
        "abuser_cores": sent["cores"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="the flood's length")
    parser.add_argument("--rounds", type=int, default=2, help="each reader this many times")
    args = parser.parse_args(argv)
    for _ in range(args.rounds):
        for reader in READERS:
            print(json.dumps(asyncio.run(measure(reader, args.seconds))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
