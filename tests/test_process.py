"""The worker as its deployments run it: `python stt_streaming_local.py`, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

from stt_worker.publisher import stream_file
from tests.helpers import REPO, SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer


async def test_sigterm_mid_utterance_publishes_the_final_and_exits_zero(nats_url, nc):
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "STT_LOG_LEVEL": "INFO",
        "STT_ENGINE": "faster-whisper",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "stt_streaming_local.py"),
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []
    ready = asyncio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            log.append(line.decode(errors="replace"))
            if "worker ready" in log[-1]:
                ready.set()

    reader = asyncio.create_task(read_log())
    try:
        await asyncio.wait_for(ready.wait(), 120)
        session = f"sigterm-{uuid.uuid4().hex[:8]}"
        inbox = await Inbox.open(nc, session)
        clip = "jfk.wav"
        # No `end`: the session is open and mid-speech when SIGTERM arrives.
        await stream_file(nc, session, SPEECH_DIR / clip, speed=0, send_end=False)
        await inbox.until(lambda m: m.get("type") == "transcript", within_s=60)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, "".join(log[-20:])
        await inbox.until_closed(within_s=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
    closed = inbox.received[-1]
    assert closed["type"] == "session_closed" and closed["reason"] == "shutdown"
    text = " ".join(
        m["transcript"] for m in inbox.received if m.get("type") == "transcript" and m["is_final"]
    )
    assert wer(manifest_text(clip), text) <= 0.2, text
    assert any("draining" in line for line in log)
