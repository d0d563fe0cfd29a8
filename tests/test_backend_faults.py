"""The HTTP variant's worker (a real `python stt_streaming.py` process) while its Whisper
backend is slow, erroring and down, then back: the worker stays bounded and recovers.

The backend is our own whisper-server on the bundled model behind a switch the test flips:
`ok` serves, `slow` serves late, `error` answers 500, and `down` is the port closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse

from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.publisher import stream_file
from stt_worker.whisper_server import create_app
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer
from tests.worker_process import WorkerProcess

MAX_PENDING_FINALS = 3
SLOW_S = 0.6  # per request, under the worker's 2 s timeout: late, not failed
TWO_UTTERANCES = "conv_2utt_1p5s.wav"
SHORT = "lj_LJ001-0008.wav"


class SwitchedBackend:
    """An ASGI app: the real whisper-server, or a fault, as `mode` says."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.mode = "ok"
        self.requests = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/audio/"):
            self.requests += 1
            if self.mode == "error":
                body = {"error": {"message": "CUDA out of memory", "type": "server_error"}}
                return await JSONResponse(body, status_code=500)(scope, receive, send)
            if self.mode == "slow":
                await asyncio.sleep(SLOW_S)  # the fault itself: a backend that answers late
        await self.real(scope, receive, send)


@contextlib.asynccontextmanager
async def listening(app: Any, port: int = 0) -> AsyncIterator[str]:
    async with serving_in_loop(app, port=port, access_log=False) as url:
        yield url


def sid() -> str:
    return f"bf-{uuid.uuid4().hex[:8]}"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def flood(nc, clip: str, sessions: int) -> dict[str, list[dict]]:
    ids = [sid() for _ in range(sessions)]
    inboxes = {s: await Inbox.open(nc, s) for s in ids}
    await asyncio.gather(*(stream_file(nc, s, SPEECH_DIR / clip, speed=0) for s in ids))
    return {s: await inbox.until_closed(within_s=60) for s, inbox in inboxes.items()}


def outcomes(messages: list[dict]) -> dict[int, str]:
    """Each utterance's fate: "final", or the code of the error it got instead."""
    fates = {}
    for m in messages:
        if m.get("type") == "transcript" and m["is_final"]:
            fates[m["utterance_id"]] = "final"
        elif m.get("type") == "error":
            fates[m["utterance_id"]] = m["code"]
    closed = messages[-1]
    assert closed["type"] == "session_closed"
    assert sorted(fates) == list(range(1, closed["utterances"] + 1)), messages
    return fates


async def test_worker_stays_bounded_while_the_backend_fails_and_recovers(engine, nats_url, nc):
    real = create_app(
        engine, model_name="tiny.en", max_concurrency=1, max_queue=64, max_upload_bytes=1 << 24
    )
    backend = SwitchedBackend(real)
    serving = contextlib.AsyncExitStack()  # the backend's listening socket: closed = down
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(lambda: serving.aclose())
        url = await serving.enter_async_context(listening(backend))
        env = {
            "NATS_URL": nats_url,
            "WHISPER_URL": url,
            "WHISPER_HTTP_TIMEOUT_S": "2",
            "WHISPER_HTTP_CONNECT_TIMEOUT_S": "0.5",
            "WHISPER_HTTP_RETRIES": "1",
            "WHISPER_HTTP_BACKOFF_S": "0.01",
            "WHISPER_HTTP_MAX_BACKOFF_S": "0.05",
            "WHISPER_HTTP_MAX_CONCURRENCY": "1",
            "STT_MAX_PENDING_FINALS": str(MAX_PENDING_FINALS),
            "STT_PARTIAL_INTERVAL_MS": "500",
        }
        worker = await stack.enter_async_context(WorkerProcess(env, script="stt_streaming.py"))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=worker.probe_url))

        # Steady state first, so the memory baseline includes a served session.
        (warm,) = (await flood(nc, SHORT, 1)).values()
        assert set(outcomes(warm).values()) == {"final"}
        rss_before = rss_bytes(worker.process.pid)
        peak_queued = 0.0

        async def watch_queue() -> None:
            nonlocal peak_queued
            while True:
                depth = await metric(http, "stt_inference_queue_depth", kind="final")
                peak_queued = max(peak_queued, depth)
                await asyncio.sleep(0.02)  # a scrape every 20 ms, not a busy loop

        watcher = asyncio.create_task(watch_queue())
        stack.callback(watcher.cancel)

        # Slow: each final comes late or is refused at once; the queue never grows past its
        # bound, and a late backend is not a failing one.
        backend.mode = "slow"
        fates = await fates_of(flood(nc, TWO_UTTERANCES, 8))
        assert set(fates) == {"final", "overloaded"}, fates
        assert (await http.get("/readyz")).status_code == 200

        # Erroring, then down (the port closed): every utterance gets its error, partials are
        # shed, and /readyz says the engine is failing.
        backend.mode = "error"
        fates = await fates_of(flood(nc, TWO_UTTERANCES, 4))
        assert fates and set(fates) <= {"backend_rejected", "overloaded"}, fates
        failing = await http.get("/readyz")
        assert failing.status_code == 503 and failing.json()["checks"]["engine"] == "failing"
        await serving.aclose()
        fates = await fates_of(flood(nc, TWO_UTTERANCES, 4))
        assert fates and set(fates) <= {"backend_unavailable", "overloaded"}, fates

        assert 0 < peak_queued <= MAX_PENDING_FINALS
        assert any("shedding" in line for line in worker.log), "partials were not shed"
        growth = rss_bytes(worker.process.pid) - rss_before
        assert growth < 64 << 20, f"RSS grew {growth >> 20} MiB"

        # Back on the same port: finals flow again and the worker is ready again.
        backend.mode = "ok"
        await serving.enter_async_context(listening(backend, int(url.rsplit(":", 1)[1])))
        (back,) = (await flood(nc, TWO_UTTERANCES, 1)).values()
        assert set(outcomes(back).values()) == {"final"}
        text = " ".join(m["transcript"] for m in back if m.get("is_final"))
        assert wer(manifest_text(TWO_UTTERANCES), text) <= 0.2, text
        assert (await http.get("/readyz")).status_code == 200


async def fates_of(results: Awaitable[dict[str, list[dict]]]) -> list[str]:
    return [fate for messages in (await results).values() for fate in outcomes(messages).values()]
