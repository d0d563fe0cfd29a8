"""The whisper-server's API key: `ApiKeyGate`, an ASGI middleware in front of every route.

With `WHISPER_API_KEY` set, a request needs `Authorization: Bearer <key>`, as OpenAI's API
and its official clients send it (the `openai` client's `api_key`); without it, or with
another key, the answer is 401 in OpenAI's error shape, before any of the body is read. The
liveness path stays open for probes. Keys are compared in constant time and never logged or
echoed.
"""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from stt_worker.core.errors import ErrorCode
from stt_worker.whisper_server.responses import RequestError

logger = logging.getLogger(__name__)

_BEARER = b"bearer"


class ApiKeyGate:
    """Lets a request through only with the key (or to one of `open_paths`)."""

    def __init__(self, app: ASGIApp, *, key: str, open_paths: frozenset[str]) -> None:
        if not key:
            raise ValueError("an empty API key would admit anyone")
        self._app = app
        self._key = key.encode()
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        logger.info("refused %s %s from %s: %s", scope["method"], scope["path"], client[0], refusal)
        await refusal.response()(scope, receive, send)

    def _refusal(self, scope: Scope) -> RequestError | None:
        presented = _bearer_token(scope)
        if presented is None:
            return _unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' (WHISPER_API_KEY)."
            )
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(presented, self._key):
            return _unauthorized("Incorrect API key provided.")
        return None


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == _BEARER and token.strip():
                return token.strip()
            return None
    return None


def _unauthorized(message: str) -> RequestError:
    return RequestError(
        401,
        message,
        code=ErrorCode.INVALID_API_KEY,
        headers={"WWW-Authenticate": 'Bearer realm="whisper-server"'},
    )
