"""Access checks for a WebSocket handshake: the browser's Origin and the optional token.

Pure: headers and query values in, a `ProtocolError` (with the code of the error frame and
close 1008) out when refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from stt_worker.core.errors import ErrorCode, ProtocolError

TOKEN_SUBPROTOCOL_PREFIX = "token."


def check_origin(origin: str | None, host: str | None, allowed: frozenset[str]) -> None:
    """Browsers always send Origin; other clients need none. A page may connect from the
    gateway's own origin (Host) or one of `allowed` ("*" = any): a cross-site page must not
    be able to open sessions with the visitor's network position."""
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return
    if host is not None and urlsplit(origin).netloc.lower() == host.lower():
        return
    raise ProtocolError(
        f"origin {origin!r} is not allowed (STT_GATEWAY_ALLOWED_ORIGINS)",
        code=ErrorCode.FORBIDDEN_ORIGIN,
    )


def presented_token(
    query: Mapping[str, str], headers: Mapping[str, str], subprotocols: list[str]
) -> tuple[str | None, str | None]:
    """The token a client presented and the subprotocol to accept it with (browsers cannot
    set headers on a WebSocket, so they use ?token= or the subprotocol "token.<value>")."""
    for subprotocol in subprotocols:
        if subprotocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return subprotocol.removeprefix(TOKEN_SUBPROTOCOL_PREFIX), subprotocol
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), None
    return query.get("token"), None


def check_token(presented: str | None, expected: str | None) -> None:
    if expected is None:
        return
    if presented is None:
        raise ProtocolError("a token is required", code=ErrorCode.UNAUTHORIZED)
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ProtocolError("wrong token", code=ErrorCode.UNAUTHORIZED)
