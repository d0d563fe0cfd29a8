"""NATS credentials and TLS from `Settings`, as keyword arguments for ``nats.connect``.

The worker and the CLI tools (`stream`, `tail`, `demo`) connect the same way. Secrets stay
`SecretStr` until this point and are never logged: `describe` names the method, not the value,
and `redact_url` strips credentials written into ``NATS_URL`` (``nats://user:pass@host``).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stt_worker.config import Settings


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
