"""End of speech -> final, and cut-offs at inserted pauses, for one end-of-turn mode.

A quick check beside the full curve (`bench/endpointing.py`): each sentence of the shared
speech set, its trailing silence trimmed at the real end of its last word
(`bench.speech_marks`) and 1.5 s of its own room tone appended, streamed at real-time pace
through an in-process worker on a local nats-server, one session at a time. Then each
sentence again with 400 and 700 ms of room tone inserted at its quietest mid-sentence gap
(`bench.pauses.quietest_gap`): more than one final means the turn was cut at the pause.

    .venv/bin/python -m bench.turn_latency turn      # or fixed, adaptive
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import nats
import numpy as np

from bench.pauses import SPEECH, quietest_gap
from bench.speech_marks import speech_span
from stt_worker.config import load_settings
from stt_worker.engines import create_engine
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import StreamStats, publish_pcm, read_wav
from stt_worker.runtime.worker import Worker

RATE = 16_000
PAUSES_S = (0.4, 0.7)


def room_tone(samples: np.ndarray, seconds: float) -> np.ndarray:
    frames = samples[: samples.size // 320 * 320].reshape(-1, 320).astype(np.float64)
    energy = np.convolve((frames**2).mean(axis=1), np.ones(10), "valid")
    quietest = samples[int(np.argmin(energy)) * 320 :][: 10 * 320]
    return np.resize(quietest, int(seconds * RATE))


def sentences() -> list[str]:
    lines = (SPEECH / "manifest.jsonl").read_text().splitlines()
    names = [json.loads(line)["file"] for line in lines]
    return [n for n in names if n.startswith(("ls_", "lj_")) or n == "jfk.wav"]


async def stream(nc, samples: np.ndarray, speech_end_s: float) -> tuple[list[dict], float]:
    """The session's finals, and ms from the speech end's send time to the last final."""
    session = f"lat-{uuid.uuid4().hex[:8]}"
    finals: list[tuple[float, dict]] = []
    closed = asyncio.Event()

    async def on_message(msg) -> None:
        import msgpack

        message = msgpack.unpackb(msg.data)
        if message.get("type") == "transcript" and message["is_final"]:
            finals.append((time.time(), message))
        if message.get("type") == "session_closed":
            closed.set()

    sub = await nc.subscribe(f"ai.voice.transcription.{session}", cb=on_message)
    stats = StreamStats()
    await publish_pcm(nc, session, samples, sample_rate_hz=RATE, speed=1, stats=stats)
    await asyncio.wait_for(closed.wait(), 60)
    await sub.unsubscribe()
    end_sent = stats.send_time_for(speech_end_s) or stats.started_at or 0.0
    latency_ms = (finals[-1][0] - end_sent) * 1000 if finals else float("nan")
    return [m for _, m in finals], latency_ms


async def main(mode: str) -> None:
    settings = load_settings(endpoint_mode=mode, http_port=-1)
    engine = await asyncio.to_thread(create_engine, settings)
    with NatsServer() as server:
        settings = load_settings(endpoint_mode=mode, http_port=-1, nats_url=server.url)
        worker, stop = Worker(settings, engine), asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await worker.ready.wait()
        nc = await nats.connect(server.url)
        latencies, cuts = [], {p: 0 for p in PAUSES_S}
        for name in sentences():
            samples, _ = read_wav(SPEECH / name)
            samples = samples.reshape(-1)
            span = speech_span(samples, RATE)
            spoken = samples[: int(span.end_s * RATE)]
            tail = room_tone(samples, 1.5)
            _, latency = await stream(nc, np.concatenate([spoken, tail]), span.end_s)
            latencies.append(latency)
            counts = []
            for pause in PAUSES_S:
                at = quietest_gap(spoken)
                paused = np.concatenate([spoken[:at], room_tone(samples, pause), spoken[at:], tail])
                cut_finals, _ = await stream(nc, paused, span.end_s + pause)
                cuts[pause] += len(cut_finals) > 1
                counts.append(len(cut_finals))
            print(f"{name}: {latency:.0f} ms, finals with pauses {counts}", flush=True)
        await nc.close()
        stop.set()
        await task
    engine.close()
    ms = np.array(latencies)
    print(
        f"{mode}: end of speech -> final p50 {np.percentile(ms, 50):.0f} ms, "
        f"p95 {np.percentile(ms, 95):.0f} ms over {ms.size} sentences; cut at "
        + ", ".join(f"{int(p * 1000)} ms pauses {cuts[p]}/{ms.size}" for p in PAUSES_S)
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "turn"))
