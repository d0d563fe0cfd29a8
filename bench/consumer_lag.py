"""What KEDA's nats-jetstream scaler sees per live session: the partition consumers' lag
(`num_pending + num_ack_pending`) while real speech streams through an elastic worker.

A real nats-server runs the shipped `k8s/nats/nats.conf` (partition mapping, JetStream); one
worker in elastic mode holds all 12 partition consumers; `--sessions` sessions stream real
speech at real time in 20 ms chunks, staggered by a second. Every 0.25 s the lag of all
consumers is summed; the samples taken while every session streams are divided by the
session count. `k8s/components/keda/scaledobject.yaml` derives its `lagThreshold` from it.

Run: `.venv/bin/python -m bench.consumer_lag [--sessions 8] [--json PATH]` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path

import nats

from stt_worker.config import load_settings
from stt_worker.engines import create_engine
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import stream_file
from stt_worker.runtime.worker import Worker

REPO = Path(__file__).resolve().parent.parent
NATS_CONF = REPO / "k8s" / "nats" / "nats.conf"
SPEECH = Path(os.environ.get("STT_SPEECH_DIR", "/work/shared/speech"))
# Continuous reading (five sentences, 36 s) and a conversation (three utterances, 14.5 s).
CLIPS = ["long_lj_LJ001-0001_to_0005.wav", "conv_3utt_2s_1s.wav"]
SAMPLE_S = 0.25


async def lag(js: nats.js.JetStreamContext, stream: str) -> int:
    return sum(c.num_pending + c.num_ack_pending for c in await js.consumers_info(stream))


async def measure(sessions: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as store:
        config = ("-c", str(NATS_CONF), "-m", "-1", "-sd", store)
        async with NatsServer(extra_args=config) as server:
            settings = load_settings(
                nats_url=server.url, durable=True, elastic=True, partitions=12,
                http_port=-1, otel_enabled=False, worker_id="bench",
            )  # fmt: skip
            engine = create_engine(settings)
            worker = Worker(settings, engine)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            await asyncio.wait_for(worker.ready.wait(), 120)
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            streaming = 0
            samples: list[float] = []

            async def one(index: int) -> None:
                nonlocal streaming
                await asyncio.sleep(index)
                streaming += 1
                clip = SPEECH / CLIPS[index % len(CLIPS)]
                for turn in range(2):  # twice (as two sessions), so that all overlap
                    await stream_file(nc, f"lag-{index}-{turn}", clip)
                streaming -= 1

            talkers = asyncio.gather(*(one(i) for i in range(sessions)))
            while not talkers.done():
                await asyncio.sleep(SAMPLE_S)
                if streaming == sessions:
                    samples.append(await lag(js, settings.jetstream_stream) / sessions)
            await talkers
            await nc.close()
            stop.set()
            await running
            engine.close()
    return {
        "sessions": sessions,
        "samples": len(samples),
        "lag_per_session_mean": round(statistics.fmean(samples), 1),
        "lag_per_session_p95": round(statistics.quantiles(samples, n=20)[-1], 1),
        "lag_per_session_max": round(max(samples), 1),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    result = asyncio.run(measure(args.sessions))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
