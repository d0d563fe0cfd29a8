"""How a command connects to NATS: `connect()` as the worker does, but giving up after a few
attempts (the TOOL policy) and saying why in one line."""

from __future__ import annotations

import sys

from stt_worker.config import Settings
from stt_worker.runtime.bus import NatsClient
from stt_worker.runtime.connection import TOOL, ConnectError, connect, redact_url
from stt_worker.tools.options import CliError


async def connect_tool(settings: Settings, name: str) -> NatsClient:
    """A client on ``NATS_URL``, or `CliError` saying why there is none."""
    url = redact_url(settings.nats_url)

    async def on_reconnect() -> None:
        print(f"nats: reconnected to {url}", file=sys.stderr)

    try:
        return await connect(settings, name, TOOL, reconnected_cb=on_reconnect)
    except ConnectError as exc:
        raise CliError(exc.message) from exc
