"""The gateway end to end: a Python WebSocket client, the real gateway, a real nats-server and
the real worker on the bundled model. One test per control form, then bad input and access.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stt_worker.runtime.publisher import read_wav
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.test_worker import WER_BOUND
from tests.textnorm import wer

CLIP = "ls_1089-134691-0000.wav"  # "HE COULD WAIT NO LONGER", 2.1 s
CLIP_2 = "lj_LJ001-0008.wav"  # "has never been surpassed.", 1.8 s
FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16


def pcm(clip: str) -> bytes:
    samples, rate = read_wav(SPEECH_DIR / clip)
    assert rate == 16_000 and samples.shape[1] == 1
    return samples.astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return np.zeros(int(16_000 * seconds), dtype="<i2").tobytes()


def sid() -> str:
    return f"gw-{uuid.uuid4().hex[:10]}"


async def send_audio(ws: ClientConnection, audio: bytes) -> None:
    """20 ms binary frames, unpaced: the worker works on audio time, not wall time."""
    for offset in range(0, len(audio), FRAME_BYTES):
        await ws.send(audio[offset : offset + FRAME_BYTES])


async def receive(ws: ClientConnection, within_s: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        frame = await ws.recv()
    assert isinstance(frame, str), "results are text frames"
    return json.loads(frame)


async def frames_until(
    ws: ClientConnection, predicate: Callable[[dict], bool], within_s: float = 30
) -> list[dict]:
    """Frames up to and including the first that matches `predicate`."""
    received = []
    while True:
        received.append(await receive(ws, within_s))
        if predicate(received[-1]):
            return received


async def close_code(ws: ClientConnection, within_s: float = 30) -> int | None:
    """Read to the end; the close code the server sent."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within_s):
            while True:
                await ws.recv()
    return ws.close_code


def is_final(frame: dict) -> bool:
    return frame.get("is_final") is True


def final_text(frames: list[dict]) -> str:
    return " ".join(f["text"] for f in frames if is_final(f) and f["text"]).strip()


def answers_flush(frame: dict) -> bool:
    """The final a flush or reset ends with: the worker's, or the gateway's empty one."""
    return is_final(frame) and frame.get("end_reason") == "end"


def of_type(kind: str) -> Callable[[dict], bool]:
    return lambda frame: frame.get("type") == kind


# ---------------------------------------------------------------- control forms


async def test_native_start_and_end(worker, make_gateway) -> None:
    gateway = await make_gateway()
    session = sid()
    async with connect(f"{gateway.ws_url}?session_id={session}") as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "speaker_id": "u1"}))
        await send_audio(ws, pcm(CLIP))
        await ws.send(json.dumps({"type": "end"}))
        frames = await frames_until(ws, of_type("session_closed"))
        assert await close_code(ws) == 1000
    assert wer(manifest_text(CLIP), final_text(frames)) <= WER_BOUND, frames
    final = next(f for f in frames if is_final(f))
    # Native frames are the worker's messages plus `text`.
    assert final["type"] == "transcript" and final["text"] == final["transcript"]
    assert final["session_id"] == session and final["speaker_id"] == "u1"
    assert final["audio_end_s"] > 0


async def test_speech_after_the_worker_idled_the_session_out_is_heard(make_worker, make_gateway):
    # A client quiet for longer than STT_SESSION_IDLE_TIMEOUT_S (a muted microphone) speaks
    # again: the worker closed its session meanwhile, and the next words open a new one.
    await make_worker(session_idle_timeout_s=1.0)
    gateway = await make_gateway()
    async with connect(f"{gateway.ws_url}?session_id={sid()}") as ws:
        await send_audio(ws, pcm(CLIP))
        first = await frames_until(ws, of_type("session_closed"))
        assert first[-1]["reason"] == "idle"
        await send_audio(ws, pcm(CLIP_2))
        await ws.send(json.dumps({"type": "end"}))
        second = await frames_until(ws, of_type("session_closed"))
        assert await close_code(ws) == 1000
    assert wer(manifest_text(CLIP), final_text(first)) <= WER_BOUND, first
    assert wer(manifest_text(CLIP_2), final_text(second)) <= WER_BOUND, second


async def test_a_browser_start_carries_per_session_options(worker, make_gateway) -> None:
    """The start options (docs/protocol.md) pass through the gateway: words come back."""
    gateway = await make_gateway()
    async with connect(f"{gateway.ws_url}?session_id={sid()}") as ws:
        await ws.send(json.dumps({"type": "start", "word_timestamps": True}))
        await send_audio(ws, pcm(CLIP))
        await ws.send(json.dumps({"type": "end"}))
        frames = await frames_until(ws, of_type("session_closed"))
    final = next(f for f in frames if is_final(f) and f["text"])
    assert final["words"] and "".join(w["word"] for w in final["words"]).strip()
    assert all(w["start_s"] <= w["end_s"] for w in final["words"])


async def test_native_state_change_barges_in(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({"type": "start"}))
        await ws.send(json.dumps({"type": "state_change", "state": "responding"}))
        await send_audio(ws, pcm(CLIP) + silence(1.0))
        frames = await frames_until(ws, of_type("interrupt"))
        assert frames[-1]["session_id"].startswith("ws-")
        await ws.send(json.dumps({"type": "end"}))
        await frames_until(ws, of_type("session_closed"))


async def test_parakeet_eos_flushes_and_session_goes_on(worker, make_gateway) -> None:
    gateway = await make_gateway()
    session = sid()
    async with connect(f"{gateway.ws_url}?protocol=parakeet&session_id={session}") as ws:
        await send_audio(ws, pcm(CLIP))
        await ws.send(b"__CTRL__:EOS")  # Parakeet-TDT clients send it as a binary frame
        first = await frames_until(ws, answers_flush)
        await send_audio(ws, pcm(CLIP_2))
        await ws.send("__CTRL__:EOS")  # ... or as text
        second = await frames_until(ws, answers_flush)
    assert {f["type"] for f in first + second} <= {"partial", "final"}, "no session_closed"
    assert wer(manifest_text(CLIP), final_text(first)) <= WER_BOUND, first
    assert wer(manifest_text(CLIP_2), final_text(second)) <= WER_BOUND, second
    # Each flush ends one worker session; later audio goes to the next.
    assert first[-1]["session_id"] == session
    assert second[-1]["session_id"] == f"{session}~2"


@pytest.mark.parametrize("reset", ["RESET", "__CTRL__:RESET"])
async def test_parakeet_reset_finalises_and_starts_over(worker, make_gateway, reset) -> None:
    gateway = await make_gateway()
    session = sid()
    async with connect(f"{gateway.ws_url}?session_id={session}") as ws:
        await send_audio(ws, pcm(CLIP))
        await ws.send(reset)
        # RESET finalises what was said (the worker never drops accepted audio).
        before = await frames_until(ws, answers_flush)
        await send_audio(ws, pcm(CLIP_2))
        await ws.send("__CTRL__:EOS")
        after = await frames_until(ws, answers_flush)
    assert before[-1]["type"] == "final", "the first control word chose the parakeet dialect"
    assert wer(manifest_text(CLIP), final_text(before)) <= WER_BOUND, before
    assert wer(manifest_text(CLIP_2), final_text(after)) <= WER_BOUND, after
    assert after[-1]["session_id"] == f"{session}~2"


async def test_onnx_final_and_reset(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(f"{gateway.ws_url}?protocol=onnx") as ws:
        await send_audio(ws, pcm(CLIP))
        await ws.send(json.dumps({"type": "final"}))
        first = await frames_until(ws, answers_flush)
        await send_audio(ws, pcm(CLIP_2))
        await ws.send(json.dumps({"type": "reset"}))
        await send_audio(ws, silence(0.2))
        await ws.send(json.dumps({"type": "final"}))
        second = await frames_until(ws, lambda f: is_final(f) and not f["text"])
    # The ONNX server's shape: type "transcript", `text`, `is_final`.
    assert all(f["type"] == "transcript" for f in first + second), first + second
    assert wer(manifest_text(CLIP), final_text(first)) <= WER_BOUND, first
    assert wer(manifest_text(CLIP_2), final_text(second)) <= WER_BOUND, second


async def test_flush_with_nothing_said_answers_an_empty_final(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({"type": "final"}))
        frame = await receive(ws)
    assert frame["type"] == "transcript" and frame["is_final"] and frame["text"] == ""


@pytest.mark.parametrize("leave", ["close", "abort"])
async def test_a_client_that_leaves_ends_its_worker_session(worker, make_gateway, nc, leave):
    gateway = await make_gateway()
    session = sid()
    inbox = await Inbox.open(nc, gateway.worker_id(session))
    async with connect(f"{gateway.ws_url}?session_id={session}") as ws:
        await send_audio(ws, pcm(CLIP))
        await inbox.until(lambda message: message.get("type") == "transcript")
        if leave == "abort":
            ws.transport.abort()  # no closing handshake: the TCP connection just drops
    messages = await inbox.until_closed()
    # The gateway sent `end` for it: the pending speech was finalised, nothing lost.
    assert messages[-1]["reason"] == "end"
    assert wer(manifest_text(CLIP), " ".join(finals_of(inbox.received))) <= WER_BOUND
    await until(lambda: not gateway.gateway.bridges, within_s=10)


def finals_of(messages: list[dict]) -> list[str]:
    return [m["transcript"] for m in messages if m.get("type") == "transcript" and m["is_final"]]


# ---------------------------------------------------------------- bad input and access


async def test_bad_frames_get_error_frames_and_the_session_goes_on(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url) as ws:
        for frame, code in [
            ("{not json", "malformed_json"),
            ('{"type": "dance"}', "unknown_type"),
            ('{"state": "listening"}', "missing_type"),
            ("[1, 2]", "not_a_map"),
            ('{"type": "state_change", "state": "sleeping"}', "invalid_field"),
            ("__CTRL__:REWIND", "unknown_type"),
            (b"\x00\x01\x02", "invalid_audio"),
            (bytes(256_002), "chunk_too_large"),  # over STT_MAX_CHUNK_BYTES
            ('{"type": "start", "sample_rate": 1000}', "unsupported_audio_format"),
        ]:
            await ws.send(frame)
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", code), (frame, error)
            assert error["message"]
        await send_audio(ws, pcm(CLIP))
        await ws.send(json.dumps({"type": "end"}))
        frames = await frames_until(ws, of_type("session_closed"))
        assert await close_code(ws) == 1000
    assert wer(manifest_text(CLIP), final_text(frames)) <= WER_BOUND, frames


async def test_frames_after_end_are_refused(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url) as ws:
        await send_audio(ws, silence(0.5))
        await ws.send(json.dumps({"type": "end"}))
        await send_audio(ws, silence(1.0))
        frames = await frames_until(ws, of_type("session_closed"))
        # Said once, not once per frame.
        assert [f.get("code") for f in frames].count("session_ended") == 1, frames
        assert await close_code(ws) == 1000


@pytest.mark.parametrize(
    ("query", "options", "code"),
    [
        ("", {"origin": "https://evil.example"}, "forbidden_origin"),
        ("", {}, "unauthorized"),
        ("?token=wrong", {}, "unauthorized"),
        ("", {"subprotocols": ["token.wrong"]}, "unauthorized"),
        ("?token=s3cret&protocol=klingon", {}, "invalid_field"),
        ("?token=s3cret&sample_rate=lots", {}, "invalid_field"),
        ("?token=s3cret&session_id=a*b", {}, "invalid_session_id"),
        # Kept for a connection's later sessions ("abc~2"): no client may take one.
        ("?token=s3cret&session_id=abc~2", {}, "invalid_session_id"),
    ],
)
async def test_refused_connections_close_with_1008(
    worker, make_gateway, query, options, code
) -> None:
    gateway = await make_gateway(token="s3cret", allowed_origins="https://app.example")
    async with connect(gateway.ws_url + query, **options) as ws:
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", code)
        assert await close_code(ws) == 1008
    # The gateway keeps serving others: browsers from allowed origins, tokens in each form.
    good = [
        (f"{gateway.ws_url}?token=s3cret", {"origin": "https://app.example"}),
        (gateway.ws_url, {"additional_headers": {"Authorization": "Bearer s3cret"}}),
        (gateway.ws_url, {"subprotocols": ["token.s3cret"]}),
        (f"{gateway.ws_url}?token=s3cret", {"origin": gateway.http_url}),  # same origin
    ]
    for url, accepted in good:
        async with connect(url, **accepted) as ws:
            await ws.send(json.dumps({"type": "final"}))
            assert is_final(await receive(ws))


async def test_connections_past_the_bound_are_refused_with_1013(make_gateway) -> None:
    gateway = await make_gateway(max_connections=1)
    async with connect(gateway.ws_url) as first, connect(gateway.ws_url) as second:
        error = await receive(second)
        assert error["code"] == "too_many_connections"
        assert await close_code(second) == 1013
        await first.send(json.dumps({"type": "final"}))
        assert is_final(await receive(first))


async def test_lost_nats_is_an_error_frame_and_1013_and_health_says_so(make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({"type": "start"}))
        await gateway.gateway.nc.close()
        await ws.send(silence(0.02))
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", "nats_unavailable")
        assert await close_code(ws) == 1013
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{gateway.http_url}/health")
    assert response.status_code == 503 and response.json()["nats_connected"] is False
    async with connect(gateway.ws_url) as ws:  # new connections are told, not hung
        assert (await receive(ws))["code"] == "nats_unavailable"
        assert await close_code(ws) == 1013


async def test_health(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with httpx.AsyncClient() as client, connect(gateway.ws_url):
        response = await client.get(f"{gateway.http_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["nats_connected"] is True
    assert body["connections"] == 1


async def test_page_and_its_files_are_served(make_gateway) -> None:
    gateway = await make_gateway()
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for name in ("app.js", "worklet.js", "style.css"):
            response = await client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert f"/static/{name}" in page.text or name == "worklet.js"


# ---------------------------------------------------------------- the command


async def test_the_gateway_command_serves_in_front_of_a_nats_url(worker, nats_url: str) -> None:
    """`stt-streaming gateway --nats-url`: connects as the tools do, serves, stops on SIGINT."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "stt_worker.tools.cli", "gateway", "--nats-url", nats_url, "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        printed = []
        async with asyncio.timeout(60):
            while not printed or "Ctrl-C to stop" not in printed[-1]:
                line = await process.stdout.readline()
                assert line, "".join(printed)
                printed.append(line.decode())
        ws_url = next(line.split()[1] for line in printed if line.startswith("ws "))
        async with connect(ws_url) as ws:
            await ws.send("{oops")
            assert (await receive(ws))["code"] == "malformed_json"
            await ws.send(json.dumps({"type": "start"}))
            await send_audio(ws, pcm(CLIP))
            await ws.send(json.dumps({"type": "end"}))
            frames = await frames_until(ws, of_type("session_closed"))
            assert await close_code(ws) == 1000
        assert wer(manifest_text(CLIP), final_text(frames)) <= WER_BOUND, frames
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
