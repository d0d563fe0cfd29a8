"""GatewaySettings: the browser gateway's own settings (``STT_GATEWAY_*``), read once.

The NATS connection and subjects are the worker's (`stt_worker.config.Settings`: ``NATS_URL``,
credentials, TLS, subject prefixes), so a gateway and its workers agree by construction.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # Loopback by default: the page needs a secure context for the microphone, and
    # http://127.0.0.1 is one; serving other hosts wants TLS in front (a reverse proxy).
    host: str = Field("127.0.0.1", alias="STT_GATEWAY_HOST")
    # 0 = a free port the OS picks (tests).
    port: int = Field(8765, alias="STT_GATEWAY_PORT", ge=0, le=65535)
    # Browser origins allowed besides the gateway's own, comma-separated; "*" allows any.
    allowed_origins: str = Field("", alias="STT_GATEWAY_ALLOWED_ORIGINS")
    # When set, every WebSocket must present it (?token=, Authorization: Bearer, or the
    # subprotocol "token.<value>").
    token: SecretStr | None = Field(None, alias="STT_GATEWAY_TOKEN")
    # Result frames queued per connection for a client that reads slowly (see outbox.py).
    max_queue: int = Field(64, alias="STT_GATEWAY_MAX_QUEUE", ge=4, le=100_000)
    max_connections: int = Field(200, alias="STT_GATEWAY_MAX_CONNECTIONS", ge=1)
    # Worker sessions a connection may have ended (flush/reset) and still await results from.
    max_pending_sessions: int = Field(8, alias="STT_GATEWAY_MAX_PENDING_SESSIONS", ge=1)
    # How long a closing handshake may wait on a client that does not read.
    close_timeout_s: float = Field(5.0, alias="STT_GATEWAY_CLOSE_TIMEOUT_S", gt=0)

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            origin.strip().rstrip("/") for origin in self.allowed_origins.split(",") if origin
        )
