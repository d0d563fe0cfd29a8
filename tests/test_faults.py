"""Faults injected for real into a running worker: the bus goes away, the engine throws.

- nats-server is SIGKILLed mid-stream and started again on the same port;
- the engine raises on one session's utterance while other sessions stream beside it.

(The HTTP Whisper backend failing is in `test_backend_faults.py`; SIGTERM and SIGKILL of the
worker process in `test_process.py`.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import msgpack
import nats
import numpy as np
import pytest
from nats.js.api import StreamConfig

from stt_worker.config import load_settings
from stt_worker.core.protocol import Start, encode_client_message
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import StreamStats, publish_pcm, read_wav, stream_file
from stt_worker.runtime.worker import Worker
from tests.engines import GatedEngine, PoisonedEngine
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.textnorm import wer

WER_BOUND = 0.2


def sid(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def final_text(messages: list[dict]) -> str:
    return " ".join(
        m["transcript"] for m in messages if m.get("type") == "transcript" and m["is_final"]
    )


def finals_published(worker: Worker) -> float:
    registry = worker.telemetry.metrics.registry
    return registry.get_sample_value("stt_transcripts_published_total", {"kind": "final"}) or 0


# ---------------------------------------------------------------- NATS killed and restarted


class StoredInbox:
    """A session's output as the restarted server stored it (a JetStream stream on the
    transcription subjects): what the worker published while disconnected is still caught
    when it reconnects before this test's client does."""

    def __init__(self, sub) -> None:
        self._sub = sub
        self.received: list[dict] = []

    @classmethod
    async def open(cls, nc, session: str) -> StoredInbox:
        js = nc.jetstream()
        subject = f"ai.voice.transcription.{session}"
        await js.add_stream(StreamConfig(name="OBSERVED", subjects=[subject]))
        return cls(await js.pull_subscribe(subject, durable="observer", stream="OBSERVED"))

    async def until(self, predicate: Callable[[dict], bool], within_s: float = 30) -> dict:
        async with asyncio.timeout(within_s):
            while True:
                try:
                    batch = await self._sub.fetch(1, timeout=1)
                except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
                    continue
                except nats.js.errors.APIError:
                    continue  # the server is coming back
                for msg in batch:
                    await msg.ack()
                    message = msgpack.unpackb(msg.data, raw=False)
                    self.received.append(message)
                    if predicate(message):
                        return message


@pytest.fixture
async def js_server(tmp_path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own (it gets killed), with JetStream on a store that
    survives its restarts."""
    server = NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream")))
    await server.start()
    yield server
    await server.stop()


async def test_nats_killed_and_restarted_mid_stream(engine, js_server):
    """The worker reconnects by itself, a final it published during the outage goes out
    when it is back, /readyz says 503 (nats) meanwhile, and the session goes on."""
    gated = GatedEngine(engine)
    gated.warm_gate.set()
    settings = load_settings(
        nats_url=js_server.url,
        http_port=0,
        partial_interval_ms=60_000,  # finals only: the one decode in flight is the final
        otel_enabled=False,
    )
    worker = Worker(settings, gated)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    nc = await nats.connect(js_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        session = sid("outage")
        inbox = await StoredInbox.open(nc, session)
        first, second = "lj_LJ001-0008.wav", "ls_1089-134691-0000.wav"
        samples, rate = read_wav(SPEECH_DIR / first)
        silence = np.zeros((rate, 1), dtype=np.int16)  # ends the utterance (500 ms endpoint)
        stats = StreamStats()
        await publish_pcm(
            nc, session, np.concatenate([samples, silence]), sample_rate_hz=rate, speed=0,
            send_end=False, stats=stats,
        )  # fmt: skip
        await asyncio.wait_for(gated.decoding.wait(), 30)  # the final is being decoded

        async with httpx.AsyncClient(base_url=worker.probe_url) as http:
            await js_server.kill()
            await until(lambda: worker.readiness()["nats"] is not None, 10)
            during = await http.get("/readyz")
            assert during.status_code == 503
            assert during.json()["checks"]["nats"] == "not connected"

            # The final comes out of the engine while the bus is down: the client buffers it.
            gated.decode_gate.set()
            await until(lambda: finals_published(worker) == 1, 30)
            await js_server.start()
            await until(lambda: worker.readiness()["nats"] is None, 30)
            assert (await http.get("/readyz")).status_code == 200

        final = await inbox.until(lambda m: m.get("is_final") is True)
        assert final["utterance_id"] == 1 and final["end_reason"] == "silence"
        assert wer(manifest_text(first), final["transcript"]) <= WER_BOUND, final

        # The same session goes on over the new connection: utterance 2, sequence 1.
        await nc.flush()
        await stream_file(nc, session, SPEECH_DIR / second, speed=0, send_start=False, stats=stats)
        closed = await inbox.until(lambda m: m.get("type") == "session_closed")
        second_final = inbox.received[-2]
        assert second_final["utterance_id"] == 2 and second_final["sequence"] == 1
        assert wer(manifest_text(second), second_final["transcript"]) <= WER_BOUND
        assert closed["reason"] == "end" and closed["utterances"] == 2
        # Its publisher heard that audio sent during the outage never reached the worker.
        dropped = [m for m in inbox.received if m.get("code") == "audio_dropped"]
        assert len(dropped) == 1 and "connection was lost" in dropped[0]["message"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await nc.close()


# ---------------------------------------------------------------- engine exception


async def test_engine_exception_on_one_session_leaves_the_others_untouched(make_worker, nc, engine):
    """A decode that raises (as a driver or library fault would) costs its session one
    `engine_error` naming the utterance; three sessions beside it get their transcripts."""
    poisoned = PoisonedEngine(engine)
    worker = await make_worker(engine_factory=lambda settings: poisoned)
    clips = ["lj_LJ001-0008.wav", "ls_1089-134691-0000.wav", "ls_1089-134691-0001.wav"]
    sessions = {sid("healthy"): clip for clip in clips}
    bad = sid("poisoned")
    inboxes = {s: await Inbox.open(nc, s) for s in [*sessions, bad]}

    async def poisoned_session() -> None:
        start = Start(language=PoisonedEngine.POISON)
        await nc.publish(f"ai.voice.stream.{bad}", encode_client_message(start))
        await stream_file(nc, bad, SPEECH_DIR / "lj_LJ001-0006.wav", speed=0, send_start=False)

    await asyncio.gather(
        poisoned_session(),
        *(stream_file(nc, s, SPEECH_DIR / clip, speed=0) for s, clip in sessions.items()),
    )
    results = {s: await inbox.until_closed(within_s=90) for s, inbox in inboxes.items()}

    bad_messages = results.pop(bad)
    errors = [m for m in bad_messages if m.get("type") == "error"]
    # One error per utterance of the clip (it has a pause), each naming its utterance.
    assert errors and {e["code"] for e in errors} == {"engine_error"}
    assert [e["utterance_id"] for e in errors] == list(range(1, len(errors) + 1))
    assert "illegal memory access" in errors[0]["message"]
    assert final_text(bad_messages) == ""
    assert bad_messages[-1]["type"] == "session_closed"
    assert poisoned.raised >= 1
    for session, messages in results.items():
        assert not [m for m in messages if m.get("type") == "error"], messages
        assert wer(manifest_text(sessions[session]), final_text(messages)) <= WER_BOUND
    assert worker.session_count == 0
