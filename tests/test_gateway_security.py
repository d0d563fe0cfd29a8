"""The gateway under attack, one test per attack (issue 21), against the real gateway (the
in-process app, or `stt-streaming gateway` as a process) over a real nats-server and worker:
session takeover, origin and Host (DNS rebinding), the token in logs and banners, idle
sockets, one address holding every slot, and error frames larger or faster than the input
that earns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import msgpack
import pytest
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection, connect

from stt_worker.runtime.publisher import StreamStats, publish_pcm, read_wav
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.test_gateway import (
    CLIP,
    CLIP_2,
    close_code,
    final_text,
    frames_until,
    is_final,
    of_type,
    pcm,
    receive,
    send_audio,
    silence,
)
from tests.test_worker import WER_BOUND
from tests.test_worker import final_text as final_on_nats
from tests.textnorm import wer

# A word of each clip that the other clip does not say.
CLIP_WORD, CLIP_2_WORD = "longer", "surpassed"
# 256 KB text frames of U+0085 in a field the error message quotes.
HOSTILE_FRAME = json.dumps({"type": "\u0085" * 120_000}, ensure_ascii=False)


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def via(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A socket to the gateway of `url` from the loopback address `source`, so that `url` may
    name any host: the Host header says what the URL says, the packets go to 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", urlsplit(url).port), source_address=(source, 0))
    sock.setblocking(False)
    return sock


def texts(frames: list[dict]) -> str:
    return " ".join(str(frame.get("text") or frame.get("transcript") or "") for frame in frames)


@contextlib.asynccontextmanager
async def gateway_process(nats_url: str, **env: str) -> AsyncIterator[tuple[str, list[str]]]:
    """`stt-streaming gateway --nats-url`: its ws URL and (once it exits) all it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "stt_worker.tools.cli", "gateway", "--nats-url", nats_url, "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    assert process.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not printed or "Ctrl-C to stop" not in printed[-1]:
                line = await process.stdout.readline()
                assert line, "".join(printed)
                printed.append(line.decode())
        ws_url = next(line.split()[1] for line in printed if line.startswith("ws "))
        yield ws_url, printed
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            printed.append((await process.stdout.read()).decode())
            assert await process.wait() == 0


# ---------------------------------------------------------------- session isolation


async def speak(ws: ClientConnection, clip: str) -> list[dict]:
    """Start, the clip, end; every frame up to the close."""
    await ws.send(json.dumps({"type": "start"}))
    await send_audio(ws, pcm(clip))
    await ws.send(json.dumps({"type": "end"}))
    frames = await frames_until(ws, of_type("session_closed"), within_s=60)
    assert await close_code(ws) == 1000
    return frames


async def test_no_cross_talk_between_gateways_and_nats_direct_sessions(
    worker, make_gateway, nc: Client, nats_url: str
) -> None:
    """A client naming a NATS-direct session's id, or another gateway's client's id, reaches
    nothing of it: it reads none of its results, adds none of its audio, cannot end it."""
    gateway_a = await make_gateway()
    victim = sid("victim")
    published: list[bytes] = []

    async def on_stream(msg) -> None:
        published.append(msg.data)

    await nc.subscribe(f"ai.voice.stream.{victim}", cb=on_stream)
    inbox = await Inbox.open(nc, victim)
    samples, _ = read_wav(SPEECH_DIR / CLIP)
    half = len(samples) // 2
    stats = StreamStats()
    await publish_pcm(nc, victim, samples[:half], speed=0, send_end=False, stats=stats)
    await inbox.until(lambda message: message.get("type") == "transcript")

    async with connect(f"{gateway_a.ws_url}?session_id={victim}") as attacker:
        stolen = await speak(attacker, CLIP_2)
    await publish_pcm(nc, victim, samples[half:], speed=0, send_start=False, stats=stats)
    messages = await inbox.until_closed(within_s=60)

    assert "could wait" not in texts(stolen).lower(), stolen
    assert CLIP_WORD not in texts(stolen).lower(), stolen
    assert [m["type"] for m in inbox.received].count("session_closed") == 1
    assert messages[-1]["reason"] == "end"
    # Its words, cut in two by the pause (Whisper may repeat the first half's): none of the
    # attacker's.
    victim_text = final_on_nats(inbox.received).lower()
    assert "could wait" in victim_text and CLIP_WORD in victim_text, victim_text
    assert CLIP_2_WORD not in victim_text, victim_text
    await until(lambda: len(published) == stats.chunks + 2, within_s=10)
    assert {msgpack.unpackb(data)["type"] for data in published} == {"start", "chunk", "end"}

    # The same id on two gateways: two sessions, each client hears only itself.
    shared = sid("shared")
    async with (
        gateway_process(nats_url) as (ws_url_b, _),
        connect(f"{gateway_a.ws_url}?session_id={shared}") as on_a,
        connect(f"{ws_url_b}?session_id={shared}") as on_b,
    ):
        heard_a, heard_b = await asyncio.gather(speak(on_a, CLIP), speak(on_b, CLIP_2))
    assert CLIP_2_WORD not in texts(heard_a).lower(), heard_a
    assert CLIP_WORD not in texts(heard_b).lower(), heard_b
    assert wer(manifest_text(CLIP), final_text(heard_a)) <= WER_BOUND, heard_a
    assert wer(manifest_text(CLIP_2), final_text(heard_b)) <= WER_BOUND, heard_b
    # Clients still read their own name for the session.
    assert {frame["session_id"] for frame in heard_a + heard_b} == {shared}


# ---------------------------------------------------------------- origin, host and token


@pytest.mark.parametrize(
    ("host", "origin", "code"),
    [
        (None, "https://127.0.0.1:{port}", "forbidden_origin"),  # another scheme
        (None, "HTTP://127.0.0.1:{port}", "forbidden_origin"),
        # No browser sends upper case.
        ("LOCALHOST:{port}", "http://LOCALHOST:{port}", "forbidden_origin"),
        (None, "http://127.0.0.1:{other}", "forbidden_origin"),
        # DNS rebinding: the attacker's name resolves to the gateway; Origin matches Host.
        ("rebind.evil.example:{port}", "http://rebind.evil.example:{port}", "forbidden_host"),
        ("rebind.evil.example:{port}", None, "forbidden_host"),
    ],
)
async def test_origin_and_host_are_compared_exactly(make_gateway, host, origin, code) -> None:
    gateway = await make_gateway()
    port = urlsplit(gateway.http_url).port
    fill = {"port": port, "other": port + 1}
    url = gateway.ws_url
    if host is not None:
        url = url.replace(f"127.0.0.1:{port}", host.format(**fill))
    options = {"origin": origin.format(**fill)} if origin else {}
    async with connect(url, sock=via(gateway.ws_url), **options) as ws:
        assert (await receive(ws))["code"] == code
        assert await close_code(ws) == 1008
    if host is not None and "evil" in host:  # the page and /health: a rebound name too
        async with httpx.AsyncClient() as client:
            response = await client.get(gateway.http_url, headers={"host": host.format(**fill)})
        assert response.status_code == 400
    # The gateway's own origin and names still pass.
    for url, own in [
        (gateway.ws_url, gateway.http_url),
        (gateway.ws_url.replace("127.0.0.1", "localhost"), f"http://localhost:{port}"),
    ]:
        async with connect(url, sock=via(url), origin=own) as ws:
            await ws.send(json.dumps({"type": "final"}))
            assert is_final(await receive(ws))


async def test_the_token_is_neither_logged_nor_printed(nats_url: str) -> None:
    secret = f"tok{uuid.uuid4().hex}"
    env = {"STT_GATEWAY_TOKEN": secret, "STT_LOG_LEVEL": "DEBUG"}
    async with gateway_process(nats_url, **env) as (ws_url, printed):
        async with connect(f"{ws_url}?token={secret}") as ws:
            await ws.send(json.dumps({"type": "final"}))
            assert is_final(await receive(ws))
        async with connect(f"{ws_url}?protocol=klingon&token={secret}") as ws:
            assert (await receive(ws))["code"] == "invalid_field"
    output = "".join(printed)
    assert "WebSocket /ws?token=***" in output, output  # the log line is there, redacted
    assert secret not in output


# ---------------------------------------------------------------- bounds


async def test_a_connection_without_audio_is_closed_after_the_idle_timeout(
    worker, make_gateway
) -> None:
    gateway = await make_gateway(first_audio_timeout_s=1.0)
    async with connect(gateway.ws_url) as idle, connect(gateway.ws_url) as talking:
        await talking.send(silence(0.1))
        await idle.send(json.dumps({"type": "start"}))  # controls are not audio
        assert (await receive(idle))["code"] == "idle_timeout"
        assert await close_code(idle) == 1008
        await talking.send(json.dumps({"type": "final"}))
        assert is_final(await receive(talking))
    assert gateway.gateway.stats.idle_closes == 1
    await until(lambda: not gateway.gateway.bridges, within_s=10)


async def test_connections_per_client_address_are_capped(make_gateway) -> None:
    gateway = await make_gateway(max_connections_per_client=2)
    url = gateway.ws_url
    async with connect(url, sock=via(url)), connect(url, sock=via(url)) as second:
        async with connect(url, sock=via(url)) as third:
            assert (await receive(third))["code"] == "too_many_connections"
            assert await close_code(third) == 1013
        async with connect(url, sock=via(url, "127.0.0.2")) as elsewhere:
            await elsewhere.send(json.dumps({"type": "final"}))
            assert is_final(await receive(elsewhere))
        await second.close()
        await until(lambda: len(gateway.gateway.bridges) == 1, within_s=10)
        async with connect(url, sock=via(url)) as again:  # a freed slot is free
            await again.send(json.dumps({"type": "final"}))
            assert is_final(await receive(again))


async def test_error_frames_are_no_larger_and_no_faster_than_bounded(make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.ws_url, max_size=None) as ws:
        await ws.send(HOSTILE_FRAME)
        reply = await ws.recv()
        assert json.loads(reply)["code"] == "unknown_type"
        assert len(reply.encode()) < 2_000 < len(HOSTILE_FRAME.encode())
        for _ in range(300):
            await ws.send(b"\x00\x01\x02")
        await ws.send(json.dumps({"type": "final"}))
        frames = await frames_until(ws, is_final)
    errors = [frame for frame in frames if frame["type"] == "error"]
    assert {error["code"] for error in errors} == {"invalid_audio"}
    assert len(errors) < 40, len(errors)  # a burst of 20 (one went above), 5 a second
    assert gateway.gateway.stats.errors_withheld >= 300 - 40


async def test_hostile_clients_beside_an_honest_one(worker, make_gateway) -> None:
    """Idle sockets and clients that never read but send 256 KB bad frames, from two other
    addresses, beside an honest client: it gets its transcript; what the gateway queues for
    each hostile connection stays small; every hostile connection is closed or refused."""
    gateway = await make_gateway(first_audio_timeout_s=2.0, max_queue=16)
    url = gateway.ws_url
    held: list[int] = []

    async def flood(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            for _ in range(40):
                await ws.send(HOSTILE_FRAME)
                held.append(max(bridge.queued_chars for bridge in gateway.gateway.bridges.values()))

    async with contextlib.AsyncExitStack() as stack:
        idle = [
            await stack.enter_async_context(connect(url, sock=via(url, "127.0.0.3")))
            for _ in range(16)
        ]
        refused = await stack.enter_async_context(connect(url, sock=via(url, "127.0.0.3")))
        assert (await receive(refused))["code"] == "too_many_connections"
        # max_queue=1: the client's own buffers fill and it stops reading.
        flooders = [
            await stack.enter_async_context(
                connect(url, sock=via(url, "127.0.0.4"), max_queue=1, max_size=None)
            )
            for _ in range(4)
        ]
        # No compression, so a 300-byte frame cannot stand for 256 KB of decoded text.
        assert all(not ws.protocol.extensions for ws in flooders)
        floods = [asyncio.create_task(flood(ws)) for ws in flooders]
        async with connect(url) as honest:
            await honest.send(json.dumps({"type": "start"}))
            await send_audio(honest, pcm(CLIP))
            await honest.send(json.dumps({"type": "end"}))
            frames = await frames_until(honest, of_type("session_closed"), within_s=60)
        await asyncio.gather(*floods)
        for ws in idle:
            assert await close_code(ws) == 1008
    assert wer(manifest_text(CLIP), final_text(frames)) <= WER_BOUND, frames
    # 16 frames of at most ~1.5 KB each, whatever the flooders sent.
    assert held and max(held) <= 16 * 2_000, max(held)
    assert gateway.gateway.stats.idle_closes >= 16
    await until(lambda: not gateway.gateway.bridges, within_s=20)
