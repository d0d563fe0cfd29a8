"""Test helpers: the shared speech clips and an inbox for a session's published messages."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

import msgpack
from nats.aio.client import Client

from stt_worker.runtime.connection import flush_in_order

REPO = Path(__file__).resolve().parent.parent
# STT_SPEECH_DIR: for a checkout whose parent has no shared/ (bench/gpu_check.sh sets it).
SPEECH_DIR = Path(os.environ.get("STT_SPEECH_DIR") or REPO.parent / "shared" / "speech")
# Where the engine tests run the models: `cpu` (the default, what their expectations were
# measured on) or `cuda` (bench/gpu_check.sh: float16 on CTranslate2, fp16 on PyTorch).
TEST_DEVICE = os.environ.get("STT_TEST_DEVICE", "cpu")


@cache
def _manifest() -> dict[str, str]:
    lines = (SPEECH_DIR / "manifest.jsonl").read_text().splitlines()
    return {entry["file"]: entry["text"] for entry in map(json.loads, lines)}


def manifest_text(file: str) -> str:
    return _manifest()[file]


class Inbox:
    """Everything published on one session's transcription subject, in arrival order."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self._queue: asyncio.Queue[dict] = asyncio.Queue()

    @classmethod
    async def open(cls, nc: Client, session_id: str) -> Inbox:
        inbox = cls()

        async def on_message(msg) -> None:
            message = msgpack.unpackb(msg.data, raw=False)
            inbox.received.append(message)
            inbox._queue.put_nowait(message)

        await nc.subscribe(f"ai.voice.transcription.{session_id}", cb=on_message)
        await flush_in_order(nc)  # the SUB reached the server: nothing published later is missed
        return inbox

    async def until(self, predicate: Callable[[dict], bool], within_s: float = 30) -> dict:
        """The next message matching `predicate` (earlier ones stay in `received`)."""
        async with asyncio.timeout(within_s):
            while True:
                message = await self._queue.get()
                if predicate(message):
                    return message

    async def until_closed(self, within_s: float = 30) -> list[dict]:
        """Messages up to and including `session_closed`, from where the last wait stopped."""
        start = len(self.received) - self._queue.qsize()
        await self.until(lambda m: m.get("type") == "session_closed", within_s)
        return self.received[start:]


async def until(condition: Callable[[], object], within_s: float, every_s: float = 0.05) -> None:
    """Wait for state that no event announces (the NATS client's connection, a counter)."""
    async with asyncio.timeout(within_s):
        while not await _holds(condition):  # noqa: ASYNC110 - nothing to await but the state
            await asyncio.sleep(every_s)


async def _holds(condition: Callable[[], object]) -> bool:
    result = condition()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


def count_reads(client: Client) -> list[int]:
    """The sizes of the reads `client`'s protocol parser is fed from now on, as they come."""
    reads: list[int] = []
    parse = client._ps.parse

    async def counted(data: bytes = b"") -> None:
        reads.append(len(data))
        await parse(data)

    client._ps.parse = counted  # type: ignore[method-assign]
    return reads
