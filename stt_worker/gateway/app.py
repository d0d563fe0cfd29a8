"""The gateway's ASGI app: the page, ``/health``, and the WebSocket endpoint.

Routes: ``/`` (the page), ``/static/*`` (its JS and CSS), ``/health``, and the WebSocket at
``/ws`` (Parakeet-TDT's path) and ``/`` (the ONNX server's). Query parameters of the
WebSocket: ``protocol`` (native, parakeet, onnx; default: inferred from the first control),
``sample_rate`` (Hz, default 16000), ``session_id`` (default ``ws-<random>``), ``token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from stt_worker.config import Settings
from stt_worker.core.audio import check_format
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode, check_session_id
from stt_worker.gateway.access import check_origin, check_token, presented_token
from stt_worker.gateway.bridge import (
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN_LATER,
    SEGMENT_MARK,
    Bridge,
    BridgeConfig,
    GatewayStats,
)
from stt_worker.gateway.control import parse_dialect
from stt_worker.gateway.dialect import GatewayError
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.runtime.bus import NatsClient, stream_prefix

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CLOSE_POLICY_VIOLATION = 1008
# Room for the "-<n>" suffix of the worker sessions a flush or reset opens.
_SUFFIX_CHARS = 8


class Gateway:
    """The connections of one gateway process, over one NATS connection."""

    def __init__(self, settings: Settings, gateway: GatewaySettings, nc: NatsClient) -> None:
        self.settings = settings
        self.gateway = gateway
        self.nc = nc
        self.stats = GatewayStats()
        self.bridges: dict[str, Bridge] = {}
        self._config = BridgeConfig(
            stream_prefix=stream_prefix(settings),
            transcription_prefix=settings.transcription_subject_prefix,
            max_chunk_bytes=settings.max_chunk_bytes,
            max_queue=gateway.max_queue,
            max_pending_sessions=gateway.max_pending_sessions,
            close_timeout_s=gateway.close_timeout_s,
        )

    async def health(self, request: Request) -> JSONResponse:
        connected = self.nc.is_connected
        body = {
            "status": "ok" if connected else "degraded",
            "nats_connected": connected,
            "connections": len(self.bridges),
            **dataclasses.asdict(self.stats),
        }
        return JSONResponse(body, status_code=200 if connected else 503)

    async def page(self, request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    async def websocket(self, websocket: WebSocket) -> None:
        query = websocket.query_params
        subprotocols = websocket.scope.get("subprotocols") or []
        token, subprotocol = presented_token(query, websocket.headers, subprotocols)
        try:
            check_origin(
                websocket.headers.get("origin"),
                websocket.headers.get("host"),
                self.gateway.origins,
            )
            expected = self.gateway.token
            check_token(token, expected.get_secret_value() if expected else None)
            dialect = parse_dialect(query.get("protocol"))
            sample_rate = _sample_rate(query.get("sample_rate"))
            session_id = query.get("session_id") or f"ws-{uuid.uuid4().hex[:16]}"
            check_session_id(session_id, self.settings.max_session_id_chars - _SUFFIX_CHARS)
            if SEGMENT_MARK in session_id:
                raise ProtocolError(
                    f"session id {session_id!r} holds {SEGMENT_MARK!r}, which the gateway "
                    "keeps for a connection's later sessions",
                    code=ErrorCode.INVALID_SESSION_ID,
                )
            if session_id in self.bridges:
                raise ProtocolError(
                    f"session id {session_id!r} is in use", code=ErrorCode.INVALID_SESSION_ID
                )
        except ProtocolError as exc:
            await _refuse(websocket, subprotocol, CLOSE_POLICY_VIOLATION, exc.code, exc.message)
            return
        if len(self.bridges) >= self.gateway.max_connections or not self.nc.is_connected:
            code = (
                ErrorCode.NATS_UNAVAILABLE
                if not self.nc.is_connected
                else ErrorCode.TOO_MANY_CONNECTIONS
            )
            await _refuse(websocket, subprotocol, CLOSE_TRY_AGAIN_LATER, code, "try again later")
            return

        await websocket.accept(subprotocol=subprotocol)
        bridge = Bridge(
            websocket,
            self.nc,
            self._config,
            self.stats,
            session_id=session_id,
            sample_rate=sample_rate,
            dialect=dialect,
        )
        self.bridges[session_id] = bridge
        self.stats.connections_total += 1
        logger.info("gateway: connection opened", extra={"session_id": session_id})
        try:
            await bridge.run()
        finally:
            del self.bridges[session_id]
            logger.info("gateway: connection closed", extra={"session_id": session_id})

    async def shutdown(self) -> None:
        """End every session as its client's ``end`` would, then close what is left (1001)."""
        bridges = list(self.bridges.values())
        for bridge in bridges:
            with contextlib.suppress(Exception):
                await bridge.end_session(CLOSE_GOING_AWAY, "gateway shutting down")
        waits = [asyncio.create_task(bridge.closed.wait()) for bridge in bridges]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.gateway.close_timeout_s)
            for task in late:
                task.cancel()
        for bridge in bridges:
            if not bridge.closed.is_set():
                bridge.abort(CLOSE_GOING_AWAY, "gateway shutting down")


def create_app(gateway: Gateway) -> Starlette:
    return Starlette(
        routes=[
            Route("/", gateway.page),
            Route("/health", gateway.health),
            WebSocketRoute("/ws", gateway.websocket),
            WebSocketRoute("/", gateway.websocket),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )


def _sample_rate(value: str | None) -> int:
    if value is None:
        return 16_000
    try:
        sample_rate = int(value)
    except ValueError as exc:
        raise ProtocolError(
            f"sample_rate {value!r} is not an integer", code=ErrorCode.INVALID_FIELD
        ) from exc
    check_format(sample_rate, 1)
    return sample_rate


async def _refuse(
    websocket: WebSocket, subprotocol: str | None, close_code: int, code: str, message: str
) -> None:
    """Accept only to say why: a browser sees no reason for a refused handshake."""
    await websocket.accept(subprotocol=subprotocol)
    await websocket.send_json(msgspec.to_builtins(GatewayError(code=code, message=message)))
    await websocket.close(close_code, message[:120])
    logger.info("gateway: connection refused: %s", message)
