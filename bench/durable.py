"""Latency cost of durable mode: the same clips through the real worker on core NATS and on
JetStream (STT_DURABLE=true), one full evaluation-harness run each, in A B B A order so a
drift in the machine's load falls on both sides; then the transport alone: 20 ms chunks
published at real-time pace to a core subscriber and through a JetStream work-queue stream
to a push consumer that acknowledges each, publish -> handler.

Run: `.venv/bin/python bench/durable.py [--rounds 2] [--limit N]`; writes
`bench/results/durable.md` and `.json` with the load average before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from stt_worker.evaluation import EvalOptions, evaluate, machine_info
from stt_worker.runtime.nats_server import NatsServer

OUT = Path(__file__).resolve().parent / "results" / "durable"


async def run(durable: bool, limit: int | None) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    report = await evaluate(
        EvalOptions(speed=1.0, plot=False, limit=limit, settings={"durable": durable})
    )
    summary = dataclasses.asdict(report.summary)

    def spread(key: str) -> str:
        values = summary[key]
        return f"{values['p50']:.0f} / {values['p95']:.0f}" if values["n"] else "-"

    return {
        "mode": "durable (JetStream)" if durable else "core NATS",
        "finals": summary["finals"],
        "stream_wer": round(summary["stream_wer"], 4),
        "speech_end_to_final_p50_p95_ms": spread("latency_speech_end_ms"),
        "last_chunk_to_final_p50_p95_ms": spread("latency_last_chunk_ms"),
        "pipeline_overhead_p50_p95_ms": spread("pipeline_overhead_ms"),
        "partial_p50_p95_ms": spread("partial_latency_ms"),
        "load_1min_before_after": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
    }


async def bench(rounds: int, limit: int | None) -> list[dict[str, object]]:
    order = [False, True, True, False] * rounds
    rows = []
    for durable in order[: 2 * rounds]:
        rows.append(await run(durable, limit))
        print(rows[-1], flush=True)
    return rows


async def transport(durable: bool, chunks: int) -> dict[str, object]:
    """publish -> handler latency of `chunks` 640-byte messages at 50 per second."""
    with tempfile.TemporaryDirectory() as store:
        async with NatsServer(extra_args=("-js", "-sd", store)) as server:
            nc = await nats.connect(server.url)
            latencies_ms: list[float] = []
            done = asyncio.Event()

            async def handle(msg) -> None:
                latencies_ms.append((time.perf_counter() - float(msg.data[:20])) * 1000)
                if durable:
                    await msg.ack()
                if len(latencies_ms) == chunks:
                    done.set()

            if durable:
                js = nc.jetstream()
                await js.add_stream(
                    StreamConfig(
                        name="BENCH", subjects=["bench.*"], retention=RetentionPolicy.WORK_QUEUE
                    )
                )
                config = ConsumerConfig(
                    durable_name="bench",
                    deliver_subject=nc.new_inbox(),
                    ack_policy=AckPolicy.EXPLICIT,
                )
                await js.add_consumer("BENCH", config)
                await js.subscribe_bind("BENCH", config, "bench", cb=handle, manual_ack=True)
            else:
                await nc.subscribe("bench.*", cb=handle)
            await nc.flush()
            started = time.perf_counter()
            for index in range(chunks):
                await asyncio.sleep(max(0.0, started + index * 0.02 - time.perf_counter()))
                payload = f"{time.perf_counter():<20.6f}".encode() + bytes(620)
                await nc.publish("bench.session", payload)
            await asyncio.wait_for(done.wait(), 30)
            await nc.close()
    quantiles = statistics.quantiles(latencies_ms, n=100)
    return {
        "mode": "JetStream push consumer, ack each" if durable else "core subscription",
        "chunks": chunks,
        "p50_ms": round(quantiles[49], 3),
        "p95_ms": round(quantiles[94], 3),
        "p99_ms": round(quantiles[98], 3),
        "load_1min": f"{os.getloadavg()[0]:.2f}",
    }


def table(rows: list[dict[str, object]]) -> list[str]:
    header = list(rows[0])
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(str(r[key]) for key in header) + " |" for r in rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (A B, then B A)")
    parser.add_argument("--limit", type=int, help="only the first N clips")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.rounds, args.limit))
    wire = [asyncio.run(transport(durable, 1500)) for durable in (False, True, True, False)]
    meta = machine_info()
    lines = [
        "# Durable mode's latency cost (evaluation harness, shared clips, speed 1)",
        "",
        f"Command: `.venv/bin/python bench/durable.py --rounds {args.rounds}"
        f"{f' --limit {args.limit}' if args.limit else ''}`; {json.dumps(meta)}",
        "",
        *table(rows),
        "",
        "Transport alone (publish -> handler, 20 ms chunks at real-time pace, one process):",
        "",
        *table(wire),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    results = {"meta": meta, "rows": rows, "transport": wire}
    OUT.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
