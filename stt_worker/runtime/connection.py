"""How every part of the project connects to NATS: `connect()`, and what it is built from.

The worker, the CLI tools (`stream`, `tail`, `demo`), the gateway and the evaluation all call
`connect()`, so all of them authenticate, use TLS and survive odd subjects the same way
(`nats_parser.harden`). Secrets stay `SecretStr` until this point and are never logged:
`describe` names the method, not the value, and `redact_url` strips credentials written into
``NATS_URL`` (``nats://user:pass@host``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

from stt_worker.config import Settings
from stt_worker.core.errors import ErrorCode
from stt_worker.runtime import nats_parser, read_size
from stt_worker.runtime.bus import BusError

logger = logging.getLogger(__name__)

ErrorCallback = Callable[[Exception], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How hard a client holds on to NATS: attempts (-1 = forever) and the wait between."""

    attempts: int
    wait_s: float
    connect_timeout_s: float = 5.0


# A worker waits for its bus forever; a command-line tool gives up after a few attempts and
# says so. The gateway connects as a tool does (docs/gateway.md, Health).
SERVICE = Reconnect(attempts=-1, wait_s=0.5)
TOOL = Reconnect(attempts=3, wait_s=1.0)


class ConnectError(BusError):
    """NATS could not be reached, or refused our credentials."""

    code = ErrorCode.NATS_UNAVAILABLE


async def connect(
    settings: Settings,
    name: str,
    reconnect: Reconnect = SERVICE,
    *,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
) -> Client:
    """A client on ``NATS_URL`` with the configured credentials and TLS."""
    url = redact_url(settings.nats_url)
    logger.info("connecting to NATS at %s (%s)", url, describe(settings))
    nats_parser.harden()  # before any message can arrive: see nats_parser.py
    read_size.widen()  # before the socket's stream reader is made: see read_size.py
    callbacks: dict[str, Any] = {"error_cb": error_cb or log_error}
    if disconnected_cb is not None:
        callbacks["disconnected_cb"] = disconnected_cb
    if reconnected_cb is not None:
        callbacks["reconnected_cb"] = reconnected_cb
    try:
        return await nats.connect(
            settings.nats_url,
            name=name,
            connect_timeout=reconnect.connect_timeout_s,
            max_reconnect_attempts=reconnect.attempts,
            reconnect_time_wait=reconnect.wait_s,
            **callbacks,
            **connect_options(settings),
        )
    except (NoServersError, OSError, TimeoutError, nats.errors.Error) as exc:
        # nats.errors.Error: e.g. the server refused our credentials.
        raise ConnectError(f"cannot connect to NATS at {url}: {exc or type(exc).__name__}") from exc


async def flush_in_order(nc: Client) -> None:
    """`nc.flush()`, once the commands nats-py still buffers are written: its PING goes
    straight to the socket, ahead of them, so its PONG alone would not prove a `SUB` or `PUB`
    made just before it processed by the server."""
    await nc._flush_pending(force_flush=True)  # returns once the flusher wrote them
    await nc.flush()


async def log_error(exc: Exception) -> None:
    # nats-py's default error callback prints a traceback per failed attempt; one line is enough.
    logger.debug("nats: %r", exc)


def connect_options(settings: Settings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for the configured authentication and TLS."""
    options: dict[str, Any] = {}
    if settings.nats_creds_file is not None:
        options["user_credentials"] = str(settings.nats_creds_file)
    if settings.nats_nkey_seed_file is not None:
        options["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying client context when any TLS file is set; None leaves TLS to the URL
    (``tls://`` gets nats-py's default context) and to the server's ``tls_required``."""
    ca, cert = settings.nats_tls_ca_file, settings.nats_tls_cert_file
    key = settings.nats_tls_key_file
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
    # Without a CA file the system store verifies the server, as for any TLS client.
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def describe(settings: Settings) -> str:
    """How the connection authenticates, for the log: names only, no secrets."""
    methods = [
        name
        for name, value in (
            ("creds file", settings.nats_creds_file),
            ("nkey", settings.nats_nkey_seed_file),
            ("token", settings.nats_token),
            ("user/password", settings.nats_user),
        )
        if value is not None
    ]
    urls = [urlsplit(url) for url in settings.nats_url.split(",")]
    if any(parts.username is not None for parts in urls):
        methods.append("credentials in URL")
    auth = ", ".join(methods) or "none"
    tls_url = any(parts.scheme == "tls" for parts in urls)
    tls = "on" if tls_url or tls_context(settings) is not None else "off"
    return f"auth: {auth}; TLS: {tls}"


def redact_url(url: str) -> str:
    """``NATS_URL`` fit for logs: ``nats://user:secret@host`` -> ``nats://user:***@host``;
    a token in the user part goes too. A comma-separated list is redacted server by server."""
    return ",".join(_redact_one(each) for each in url.split(","))


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
