"""GatewaySettings: the browser gateway's own settings (``STT_GATEWAY_*``), read once.

The NATS connection and subjects are the worker's (`stt_worker.config.Settings`: ``NATS_URL``,
credentials, TLS, subject prefixes), so a gateway and its workers agree by construction.
Fields are declared with `stt_worker.config.setting`, so docs/configuration.md lists them too.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from stt_worker.config import EnvSettings, setting
from stt_worker.gateway.access import LOOPBACK_NAMES, host_name, normal_origin


class GatewayGroup(StrEnum):
    """The gateway's settings by concern, in the order the source and the docs list them."""

    LISTENER = "Listener"
    ACCESS = "Origin and token"
    LIMITS = "Limits and bounds"


class GatewaySettings(EnvSettings):
    """The browser gateway's own settings (`stt-streaming gateway`).

    Its NATS connection (`NATS_URL`, credentials, TLS), the subjects, `STT_MAX_CHUNK_BYTES`
    and `STT_MAX_SESSION_ID_CHARS` are the worker's settings, so a gateway and its workers
    agree by construction.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # Loopback by default: the page needs a secure context for the microphone, and
    # http://127.0.0.1 is one.
    host: str = setting(
        "127.0.0.1",
        "STT_GATEWAY_HOST",
        group=GatewayGroup.LISTENER,
        description="Listen address. The microphone needs a secure context, which loopback "
        "is; serving other hosts wants TLS in front (a reverse proxy).",
    )
    port: int = setting(
        8765,
        "STT_GATEWAY_PORT",
        group=GatewayGroup.LISTENER,
        description="Listen port; 0 = a free port the OS picks (tests).",
        ge=0,
        le=65535,
    )
    allowed_origins: str = setting(
        "",
        "STT_GATEWAY_ALLOWED_ORIGINS",
        group=GatewayGroup.ACCESS,
        description="Browser origins allowed besides the gateway's own, comma-separated; "
        "`*` allows any.",
    )
    allowed_hosts: str = setting(
        "",
        "STT_GATEWAY_ALLOWED_HOSTS",
        group=GatewayGroup.ACCESS,
        description="Names clients may reach the gateway by (the `Host` header, port aside), "
        "comma-separated; empty = `localhost`, `127.0.0.1`, `::1` and `STT_GATEWAY_HOST`; "
        "`*` allows any. Refuses DNS rebinding: a page on another name that resolves here.",
    )
    token: SecretStr | None = setting(
        None,
        "STT_GATEWAY_TOKEN",
        group=GatewayGroup.ACCESS,
        description="When set, every WebSocket must present it (`?token=`, "
        "`Authorization: Bearer`, or the subprotocol `token.<value>`); empty = unset.",
    )
    max_queue: int = setting(
        64,
        "STT_GATEWAY_MAX_QUEUE",
        group=GatewayGroup.LIMITS,
        description="Result frames queued per connection for a client that reads slowly "
        "(partials are dropped first).",
        ge=4,
        le=100_000,
    )
    max_connections: int = setting(
        200,
        "STT_GATEWAY_MAX_CONNECTIONS",
        group=GatewayGroup.LIMITS,
        description="Connections at once; more are closed with 1013 `too_many_connections`.",
        ge=1,
    )
    max_pending_sessions: int = setting(
        8,
        "STT_GATEWAY_MAX_PENDING_SESSIONS",
        group=GatewayGroup.LIMITS,
        description="Worker sessions a connection may have ended (flush, reset) and still "
        "await results from; past it, audio gets `overloaded`.",
        ge=1,
    )
    max_connections_per_client: int = setting(
        16,
        "STT_GATEWAY_MAX_CONNECTIONS_PER_CLIENT",
        group=GatewayGroup.LIMITS,
        description="Connections at once from one client address (behind a proxy, the "
        "address it forwards); more are closed with 1013 `too_many_connections`.",
        ge=1,
    )
    first_audio_timeout_s: float = setting(
        10.0,
        "STT_GATEWAY_FIRST_AUDIO_TIMEOUT_S",
        group=GatewayGroup.LIMITS,
        description="A connection that sends no audio this many seconds after it opens is "
        "closed with 1008 `idle_timeout`.",
        gt=0,
    )
    close_timeout_s: float = setting(
        5.0,
        "STT_GATEWAY_CLOSE_TIMEOUT_S",
        group=GatewayGroup.LIMITS,
        description="How long a closing handshake waits on a client that does not read, in "
        "seconds.",
        gt=0,
    )

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            normal_origin(origin) for origin in self.allowed_origins.split(",") if origin.strip()
        )

    @property
    def hosts(self) -> frozenset[str]:
        """The names the Host header may carry (lower-case, no port)."""
        named = {host_name(name) for name in self.allowed_hosts.split(",") if name.strip()}
        if "*" in named:
            return frozenset({"*"})
        if named:
            return frozenset(named)
        listening = {host_name(self.host)} - {"0.0.0.0", "::", ""}
        return LOOPBACK_NAMES | listening
