"""Gateway memory under hostile clients: RSS of one `stt-streaming gateway --nats-url`
process before, during and after clients that never read and send 256 KB text frames of
U+0085 in a field that error messages quote (issue 21).

The baseline is the same process's RSS before the clients connect, so the figures are
ratios measured in one run: peak / before (what the clients cost while connected) and
after / before (what stayed once they left). The 1-minute load average is printed with
them. Usage: ``python -m bench.gateway_hostile [--clients 20] [--frames 80]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass

from websockets.asyncio.client import connect

from stt_worker.runtime.nats_server import NatsServer

HOSTILE_FRAME = json.dumps({"type": "\u0085" * 120_000}, ensure_ascii=False)
SETTLE_S = 8.0  # after the clients leave, before "after" is read


@dataclass
class Result:
    clients: int
    frames_each: int
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    load_1min: float

    @property
    def peak_ratio(self) -> float:
        return self.rss_peak_mb / self.rss_before_mb

    @property
    def after_ratio(self) -> float:
        return self.rss_after_mb / self.rss_before_mb


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def measure(clients: int, frames: int) -> Result:
    async with NatsServer() as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "stt_worker.tools.cli", "gateway", "--nats-url", server.url, "--port", "0"),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "STT_GATEWAY_MAX_CONNECTIONS_PER_CLIENT": str(clients)},
        )
        assert process.stdout is not None
        printed = [""]
        while "Ctrl-C" not in printed[-1]:
            printed.append((await process.stdout.readline()).decode())
        url = next(line.split()[1] for line in printed if line.startswith("ws "))
        before = peak = rss_mb(process.pid)

        async def hostile() -> None:
            nonlocal peak
            # The gateway may close it (1013, 1008): what it held until then is the point.
            with contextlib.suppress(Exception):
                async with connect(url, max_queue=1, max_size=None) as ws:
                    for _ in range(frames):
                        await ws.send(HOSTILE_FRAME)
                        peak = max(peak, rss_mb(process.pid))

        await asyncio.gather(*(hostile() for _ in range(clients)))
        peak = max(peak, rss_mb(process.pid))
        await asyncio.sleep(SETTLE_S)
        after = rss_mb(process.pid)
        process.send_signal(signal.SIGINT)
        await process.wait()
    return Result(clients, frames, before, peak, after, os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--frames", type=int, default=80)
    args = parser.parse_args()
    result = asyncio.run(measure(args.clients, args.frames))
    print(json.dumps(asdict(result)))
    print(
        f"{result.clients} hostile clients: RSS {result.rss_before_mb:.0f} MB before, "
        f"peak {result.rss_peak_mb:.0f} MB (x{result.peak_ratio:.2f}), "
        f"{result.rss_after_mb:.0f} MB {SETTLE_S:g} s after they left "
        f"(x{result.after_ratio:.2f}); load {result.load_1min:.2f}"
    )


if __name__ == "__main__":
    main()
