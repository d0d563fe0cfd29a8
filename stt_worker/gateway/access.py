"""Access checks for a WebSocket handshake: the Host it names, the browser's Origin and the
optional token; and the filter that keeps tokens out of the HTTP server's logs.

Pure: headers and query values in, a `ProtocolError` (with the code of the error frame and
close 1008) out when refused.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from stt_worker.core.errors import ErrorCode, ProtocolError

TOKEN_SUBPROTOCOL_PREFIX = "token."
ANY = "*"
# The names a loopback listener answers to; the defaults of STT_GATEWAY_ALLOWED_HOSTS.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def check_host(host: str | None, allowed: frozenset[str]) -> None:
    """The Host header must name this gateway. A page on an attacker's name that re-resolves
    to the gateway's address (DNS rebinding) is its own origin, so the Origin check alone
    would let it in; its Host still names the attacker."""
    if ANY in allowed:
        return
    name = host_name(host or "")
    if name not in allowed:
        raise ProtocolError(
            f"host {(host or '')[:80]!r} is not one of this gateway's names "
            "(STT_GATEWAY_ALLOWED_HOSTS)",
            code=ErrorCode.FORBIDDEN_HOST,
        )


def host_name(host: str) -> str:
    """The name in a Host header, lower-case, without its port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_origin(
    origin: str | None, scheme: str, host: str | None, allowed: frozenset[str]
) -> None:
    """Browsers always send Origin; other clients need none. A page may connect from the
    gateway's own origin or one of `allowed` ("*" = any): a cross-site page must not be able
    to open sessions with the visitor's network position.

    Compared as exact strings, as browsers serialise origins (lower-case scheme and host, no
    default port): the gateway's own is `scheme` (http or https, as the client reached it)
    plus the Host it named; an https page is not the http gateway's origin.
    """
    if origin is None or ANY in allowed or origin in allowed:
        return
    if host is not None and origin == f"{scheme}://{host}":
        return
    raise ProtocolError(
        f"origin {origin[:120]!r} is not allowed (STT_GATEWAY_ALLOWED_ORIGINS)",
        code=ErrorCode.FORBIDDEN_ORIGIN,
    )


def normal_origin(origin: str) -> str:
    """A configured origin as a browser would send it: lower-case scheme and host, no path."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return origin.strip()
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


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


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']*", re.IGNORECASE)


def redact_token(text: str) -> str:
    """`text` with the value of every ``token=`` query parameter replaced by ``***``."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class TokenRedaction(logging.Filter):
    """Rewrites records that carry a URL's query: uvicorn logs every WebSocket handshake as
    ``WebSocket /ws?token=...`` at INFO, and browsers can only send the token in the URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = redact_token(message), None
        return True


def redact_server_logs(names: tuple[str, ...] = ("uvicorn.error", "uvicorn.access")) -> None:
    """Install `TokenRedaction` on the HTTP server's loggers (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(each, TokenRedaction) for each in logger.filters):
            logger.addFilter(TokenRedaction())
