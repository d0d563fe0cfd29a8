"""Fixtures for the browser gateway: the real app served in the test's loop on a real NATS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from stt_worker.config import load_settings
from stt_worker.gateway.app import Gateway, create_app, server_options
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.connection import TOOL, connect


@dataclass
class RunningGateway:
    gateway: Gateway
    http_url: str

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"

    def worker_id(self, client_id: str, token: str | None = None) -> str:
        """The worker's id for a client's session id (the gateway namespaces it)."""
        return self.gateway.worker_id(client_id, token)


@pytest.fixture
async def make_gateway(nats_url: str) -> AsyncIterator:
    """Start a gateway with `GatewaySettings` overrides (field names); stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: object) -> RunningGateway:
            settings = load_settings(nats_url=nats_url)
            # As `stt-streaming gateway` connects: connect() with the tools' policy.
            nc = await connect(settings, "gateway-test", TOOL)
            stack.push_async_callback(nc.close)
            gateway = Gateway(settings, GatewaySettings(**overrides), nc)
            stack.push_async_callback(gateway.shutdown)
            url = await stack.enter_async_context(
                serving_in_loop(create_app(gateway), **server_options(settings))
            )
            return RunningGateway(gateway, url)

        yield start
