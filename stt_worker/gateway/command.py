"""``stt-streaming gateway``: the WebSocket gateway and its page, by default with a worker.

Without ``--nats-url`` everything runs in one process, as ``demo`` does: an embedded
nats-server, the worker on the bundled model, and the gateway. With ``--nats-url`` the
gateway runs alone, in front of the workers that serve that NATS.

The banner never prints ``STT_GATEWAY_TOKEN`` unless ``--show-token`` asks for it: a
terminal's output ends up in scrollback, screen shares and CI logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from stt_worker.config import load_settings
from stt_worker.gateway.app import Gateway, create_app, server_options
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.connection import redact_url
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.telemetry.logs import setup_logging
from stt_worker.tools.connection import connect_tool
from stt_worker.tools.embedded import running_worker
from stt_worker.tools.options import given


async def run_gateway(
    *,
    host: str | None,
    port: int | None,
    nats_url: str | None,
    engine_kind: str,
    whisper_url: str | None,
    model: str | None,
    show_token: bool = False,
) -> int:
    """Serve until SIGINT or SIGTERM, then end every connection's session as `end` would."""
    gateway_settings = GatewaySettings(**given(host=host, port=port))
    stop = _stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        url = nats_url or (await stack.enter_async_context(NatsServer())).url
        print(f"nats     {redact_url(url)}{'' if nats_url else '  (embedded nats-server)'}")
        settings = load_settings(nats_url=url, **given(whisper_model_size=model))
        # The page is the output; the worker's INFO logs are noise unless asked for.
        setup_logging(
            settings.log_level if "log_level" in settings.model_fields_set else "WARNING",
            settings.log_format,
        )
        if not nats_url:
            # Entered before the gateway, so it drains after the gateway ended its sessions.
            await stack.enter_async_context(running_worker(settings, engine_kind, whisper_url))
        nc = await connect_tool(settings, "stt-streaming gateway")
        stack.push_async_callback(nc.drain)
        gateway = Gateway(settings, gateway_settings, nc)
        async with serving_in_loop(
            create_app(gateway),
            host=gateway_settings.host,
            port=gateway_settings.port,
            **server_options(settings),
        ) as http_url:
            ws_url = http_url.replace("http://", "ws://", 1)
            print(f"page     {http_url}/{_token_query(gateway_settings, show_token)}")
            print(f"ws       {ws_url}/ws  (health: {http_url}/health)")
            print("Ctrl-C to stop", flush=True)
            await stop.wait()
            await gateway.shutdown()
    return 0


def _token_query(gateway: GatewaySettings, show_token: bool) -> str:
    """The page URL's query: the token when asked for, else where to put it."""
    if gateway.token is None:
        return ""
    if show_token:
        return f"?token={gateway.token.get_secret_value()}"
    return "?token=<STT_GATEWAY_TOKEN>  (--show-token prints it)"


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
