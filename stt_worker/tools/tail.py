"""``tail``: print the worker's output messages as they are published, one line each.

Two renderings, chosen on the command line: `render_line` (the console's) and `render_json`
(one JSON object per line: the message's fields as the wire carries them).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

import msgspec

from stt_worker.config import load_settings
from stt_worker.core.errors import ProtocolError
from stt_worker.runtime import bus
from stt_worker.runtime.bus import Delivery
from stt_worker.runtime.connection import redact_url
from stt_worker.tools.connection import connect_tool
from stt_worker.tools.console import format_delivery, unreadable_fields
from stt_worker.tools.options import given

Renderer = Callable[[Delivery], str]


async def tail(*, nats_url: str | None, subject: str | None, render: Renderer) -> int:
    """Print every message on `subject` (default: every session's results) until Ctrl-C."""
    settings = load_settings(**given(nats_url=nats_url))
    subject = subject or f"{settings.transcription_subject_prefix}.>"
    nc = await connect_tool(settings, "stt-streaming tail")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def show(delivery: Delivery) -> None:
        print(render(delivery), flush=True)

    try:
        await bus.subscribe(nc, subject, show)
        print(
            f"listening on {subject} at {redact_url(settings.nats_url)}; Ctrl-C to stop",
            file=sys.stderr,
        )
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await nc.drain()
    return 0


def render_line(delivery: Delivery) -> str:
    """The console's one-line rendering."""
    return format_delivery(delivery)


def render_json(delivery: Delivery) -> str:
    """One JSON object: the message's fields, or what an unreadable payload holds."""
    message = delivery.message
    if isinstance(message, ProtocolError):
        return msgspec.json.encode(unreadable_fields(delivery)).decode()
    return msgspec.json.encode(message).decode()
