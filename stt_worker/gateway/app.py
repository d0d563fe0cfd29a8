"""The gateway's ASGI app: the page, ``/health``, and the WebSocket endpoint.

Routes: ``/`` (the page), ``/static/*`` (its JS and CSS), ``/health``, and the WebSocket at
``/ws`` (Parakeet-TDT's path) and ``/`` (the ONNX server's). Query parameters of the
WebSocket: ``protocol`` (native, parakeet, onnx; default: inferred from the first control),
``sample_rate`` (Hz, default 16000), ``session_id`` (default ``ws-<random>``; the client's
name for its session, namespaced for the worker by namespace.py), ``token``. The OpenAI
Realtime transcription endpoint, ``/v1/realtime?intent=transcription`` (realtime.py), takes
``session_id`` (default ``rt-<random>``) and the same token.

Before a WebSocket is served: its Host, Origin and token are checked (access.py; refused
with 1008), then the connection bounds, all and per client address (1013).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from stt_worker.config import Settings
from stt_worker.core.audio import check_format
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode, check_session_id
from stt_worker.gateway.access import (
    check_host,
    check_origin,
    check_token,
    presented_token,
    redact_server_logs,
)
from stt_worker.gateway.bridge import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    SEGMENT_MARK,
    Bridge,
    BridgeConfig,
    GatewayStats,
)
from stt_worker.gateway.control import Dialect, parse_dialect
from stt_worker.gateway.dialect import GatewayError
from stt_worker.gateway.limits import AddressSlots
from stt_worker.gateway.namespace import ADDED_CHARS, SessionNamespace
from stt_worker.gateway.realtime import RealtimeBridge
from stt_worker.gateway.realtime_events import REALTIME_SAMPLE_RATE, check_intent, error_event
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.runtime.bus import NatsClient, stream_prefix
from stt_worker.runtime.process import HeapTrimmer

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Room for the "-<n>" suffix of the worker sessions a flush or reset opens.
_SUFFIX_CHARS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """What a WebSocket handshake that passed the checks asks for."""

    client_id: str
    worker_id: str
    dialect: Dialect | None
    sample_rate: int
    address: str
    realtime: bool = False


class Gateway:
    """The connections of one gateway, over one NATS connection; `bridges` by worker id."""

    def __init__(self, settings: Settings, gateway: GatewaySettings, nc: NatsClient) -> None:
        self.settings = settings
        self.gateway = gateway
        self.nc = nc
        self.stats = GatewayStats()
        self.bridges: dict[str, Bridge] = {}
        self.namespace = SessionNamespace()
        self._slots = AddressSlots(gateway.max_connections_per_client)
        self._trimmer = HeapTrimmer()
        self._config = BridgeConfig(
            stream_prefix=stream_prefix(settings),
            transcription_prefix=settings.transcription_subject_prefix,
            max_chunk_bytes=settings.max_chunk_bytes,
            max_queue=gateway.max_queue,
            max_pending_sessions=gateway.max_pending_sessions,
            close_timeout_s=gateway.close_timeout_s,
            first_audio_timeout_s=gateway.first_audio_timeout_s,
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

    def worker_id(self, client_id: str, credential: str | None = None) -> str:
        """The worker session id of a client's `client_id`, given the token it presented."""
        return self.namespace.worker_id(self.namespace.scope(credential), client_id)

    async def websocket(self, websocket: WebSocket) -> None:
        await self._handle(websocket, realtime=False)

    async def realtime(self, websocket: WebSocket) -> None:
        """OpenAI Realtime transcription (realtime.py), behind the same checks and bounds."""
        await self._handle(websocket, realtime=True)

    async def _handle(self, websocket: WebSocket, *, realtime: bool) -> None:
        subprotocols = websocket.scope.get("subprotocols") or []
        token, subprotocol = presented_token(
            websocket.query_params, websocket.headers, subprotocols
        )
        try:
            admission = self._admit(websocket, token, realtime=realtime)
        except ProtocolError as exc:
            await _refuse(
                websocket, subprotocol, CLOSE_POLICY_VIOLATION, exc.code, exc.message, realtime
            )
            return
        refusal = self._over_capacity()
        if refusal is None and not self._slots.take(admission.address):
            refusal = (ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from this address")
        if refusal is not None:
            await _refuse(websocket, subprotocol, CLOSE_TRY_AGAIN_LATER, *refusal, realtime)
            return
        try:
            await websocket.accept(subprotocol=subprotocol)
            await self._serve(websocket, admission)
        finally:
            self._slots.give_back(admission.address)

    def _admit(self, websocket: WebSocket, token: str | None, *, realtime: bool) -> Admission:
        """The handshake's checks, in the order a refusal names them; `ProtocolError` (1008)."""
        headers, query = websocket.headers, websocket.query_params
        host = headers.get("host")
        check_host(host, self.gateway.hosts)
        scheme = "https" if websocket.url.scheme == "wss" else "http"
        check_origin(headers.get("origin"), scheme, host, self.gateway.origins)
        expected = self.gateway.token
        check_token(token, expected.get_secret_value() if expected else None)
        if realtime:
            check_intent(query.get("intent"))
            dialect, sample_rate = None, REALTIME_SAMPLE_RATE
        else:
            dialect = parse_dialect(query.get("protocol"))
            sample_rate = _sample_rate(query.get("sample_rate"))
        prefix = "rt" if realtime else "ws"
        client_id = query.get("session_id") or f"{prefix}-{uuid.uuid4().hex[:16]}"
        _check_client_id(client_id, self.settings.max_session_id_chars)
        worker_id = self.worker_id(client_id, token)
        if worker_id in self.bridges:
            raise ProtocolError(
                f"session id {client_id!r} is in use", code=ErrorCode.INVALID_SESSION_ID
            )
        address = websocket.client.host if websocket.client else "unknown"
        return Admission(client_id, worker_id, dialect, sample_rate, address, realtime)

    def _over_capacity(self) -> tuple[str, str] | None:
        if not self.nc.is_connected:
            return ErrorCode.NATS_UNAVAILABLE, "try again later"
        if len(self.bridges) >= self.gateway.max_connections:
            return ErrorCode.TOO_MANY_CONNECTIONS, "try again later"
        return None

    async def _serve(self, websocket: WebSocket, admission: Admission) -> None:
        session_id = admission.worker_id
        kind = RealtimeBridge if admission.realtime else Bridge
        bridge = kind(
            websocket,
            self.nc,
            self._config,
            self.stats,
            session_id=session_id,
            client_id=admission.client_id,
            sample_rate=admission.sample_rate,
            dialect=admission.dialect,
        )
        self.bridges[session_id] = bridge
        self.stats.connections_total += 1
        logger.info("gateway: connection opened", extra={"session_id": session_id})
        try:
            await bridge.run()
        finally:
            del self.bridges[session_id]
            logger.info("gateway: connection closed", extra={"session_id": session_id})
            # A hostile client's frames leave freed heap behind; give it back to the OS.
            self._trimmer.session_closed()
            self._trimmer.maybe_trim(len(self.bridges))

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


def create_app(gateway: Gateway) -> HostGuard:
    redact_server_logs()
    app = Starlette(
        routes=[
            Route("/", gateway.page),
            Route("/health", gateway.health),
            WebSocketRoute("/ws", gateway.websocket),
            WebSocketRoute("/", gateway.websocket),
            WebSocketRoute("/v1/realtime", gateway.realtime),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )
    return HostGuard(app, gateway.gateway.hosts)


def server_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the gateway, the same for the command and the tests."""
    return {
        "lifespan": "off",
        # uvicorn logs each request's URL, and a browser's token is in it.
        "access_log": False,
        # Larger frames than the worker takes are refused by uvicorn (close 1009).
        "ws_max_size": settings.max_chunk_bytes + 1024,
        # No compression: a compressed frame of a few hundred bytes can stand for 256 KB of
        # text, and uvicorn decodes all the frames of one read before it stops reading (20
        # such clients: 62 -> 194 MB RSS with it, 83 MB without). PCM hardly compresses.
        "ws_per_message_deflate": False,
    }


class HostGuard:
    """HTTP requests whose Host is not one of the gateway's names get 400 (DNS rebinding);
    WebSockets are checked by the endpoint, which can say why in an error frame."""

    def __init__(self, app: Starlette, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            try:
                check_host(host, self.hosts)
            except ProtocolError as exc:
                await PlainTextResponse(exc.message, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _check_client_id(client_id: str, max_session_id_chars: int) -> None:
    """A client's name for its session: the worker's rules, less what the gateway adds."""
    limit = max_session_id_chars - _SUFFIX_CHARS - ADDED_CHARS
    if len(client_id) > limit:
        raise ProtocolError(
            f"session id of {len(client_id)} characters is longer than {limit} "
            "(STT_MAX_SESSION_ID_CHARS less what the gateway adds)",
            code=ErrorCode.INVALID_SESSION_ID,
        )
    check_session_id(client_id, limit)
    if SEGMENT_MARK in client_id:
        raise ProtocolError(
            f"session id {client_id!r} holds {SEGMENT_MARK!r}, which the gateway keeps for a "
            "connection's later sessions",
            code=ErrorCode.INVALID_SESSION_ID,
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
    websocket: WebSocket,
    subprotocol: str | None,
    close_code: int,
    code: str,
    message: str,
    realtime: bool,
) -> None:
    """Accept only to say why: a browser sees no reason for a refused handshake."""
    await websocket.accept(subprotocol=subprotocol)
    if realtime:
        await websocket.send_text(error_event(code, message, server=False))
    else:
        await websocket.send_json(msgspec.to_builtins(GatewayError(code=code, message=message)))
    await websocket.close(close_code, message[:120])
    logger.info("gateway: connection refused: %s", message)
