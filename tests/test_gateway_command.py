"""`stt-streaming gateway` as a user runs it: embedded nats-server, worker and bundled model in
one process; it prints the page's URL, serves it, and on Ctrl-C ends the open sessions so
their clients still get their last finals."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

import httpx
from websockets.asyncio.client import connect

from tests.helpers import REPO, manifest_text
from tests.test_gateway import (
    CLIP,
    answers_flush,
    close_code,
    final_text,
    frames_until,
    pcm,
    send_audio,
)
from tests.test_worker import WER_BOUND
from tests.textnorm import wer


async def test_gateway_command_serves_the_page_and_ends_sessions_on_ctrl_c() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_worker.tools.cli",
        "gateway",
        "--port",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        printed = []
        async with asyncio.timeout(120):
            while not printed or not printed[-1].startswith("Ctrl-C"):
                printed.append((await process.stdout.readline()).decode().strip())
        page_url = next(re.search(r"http://\S+/", line) for line in printed if "page" in line)
        assert page_url is not None, printed
        url = page_url.group(0)
        async with httpx.AsyncClient() as client:
            assert "Live captions" in (await client.get(url)).text
            assert (await client.get(f"{url}health")).json()["nats_connected"] is True

        ws_url = url.replace("http://", "ws://") + "ws?protocol=native"
        async with connect(ws_url) as ws:
            await send_audio(ws, pcm(CLIP))
            await ws.send(json.dumps({"type": "final"}))
            frames = await frames_until(ws, answers_flush)
            assert wer(manifest_text(CLIP), final_text(frames)) <= WER_BOUND, frames
            closed = await frames_until(ws, lambda frame: frame["type"] == "session_closed")
            assert closed[-1]["session_id"] == frames[0]["session_id"]
            # Speech still being said when the gateway stops is finalised and sent: once the
            # worker has heard some of it (a result of the next session), stop the gateway.
            await send_audio(ws, pcm(CLIP))
            heard = await frames_until(ws, lambda frame: frame["type"] == "transcript")
            assert heard[-1]["session_id"].endswith("~2")
            process.send_signal(signal.SIGINT)
            frames = await frames_until(ws, lambda frame: frame["type"] == "session_closed")
            assert final_text(frames), frames
            assert await close_code(ws) == 1001
        async with asyncio.timeout(60):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
