"""The `http` engine: the external OpenAI-compatible service it calls and how patiently."""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from stt_worker.config.fields import Group, setting


class HttpEngineFields(BaseModel):
    """The fields of `Group.HTTP_ENGINE`, one of the bases of `Settings`."""

    whisper_url: str = setting(
        "http://whisper-predictor.ai-ml.svc.cluster.local",
        "WHISPER_URL",
        group=Group.HTTP_ENGINE,
        description="The OpenAI-compatible Whisper service; credentials in the URL are "
        "stripped from it, sent as basic auth and never logged.",
    )
    whisper_http_path: str = setting(
        "/v1/audio/transcriptions",
        "WHISPER_HTTP_PATH",
        group=Group.HTTP_ENGINE,
        description="Endpoint path on `WHISPER_URL`.",
    )
    whisper_http_model: str = setting(
        "whisper-1",
        "WHISPER_HTTP_MODEL",
        group=Group.HTTP_ENGINE,
        description="`model` form field sent with each request.",
    )
    whisper_api_key: SecretStr | None = setting(
        None,
        "WHISPER_API_KEY",
        group=Group.HTTP_ENGINE,
        description="Sent as `Authorization: Bearer`; never logged. `whisper-server` "
        "requires it of every request but `/health` when set (401 without it).",
    )
    whisper_http_response_format: str = setting(
        "verbose_json",
        "WHISPER_HTTP_RESPONSE_FORMAT",
        group=Group.HTTP_ENGINE,
        description="`verbose_json` (segments and no-speech probabilities, so silent "
        "segments are dropped), `json` or `text`.",
    )
    whisper_http_connect_timeout_s: float = setting(
        5.0,
        "WHISPER_HTTP_CONNECT_TIMEOUT_S",
        group=Group.HTTP_ENGINE,
        description="Connect timeout of a request, in seconds.",
        gt=0,
    )
    whisper_http_timeout_s: float = setting(
        30.0,
        "WHISPER_HTTP_TIMEOUT_S",
        group=Group.HTTP_ENGINE,
        description="Read timeout of a request, in seconds.",
        gt=0,
    )
    whisper_http_max_concurrency: int = setting(
        4,
        "WHISPER_HTTP_MAX_CONCURRENCY",
        group=Group.HTTP_ENGINE,
        description="Requests in flight at once.",
        ge=1,
    )
    whisper_http_retries: int = setting(
        3,
        "WHISPER_HTTP_RETRIES",
        group=Group.HTTP_ENGINE,
        description="Retries of a failure that may pass (connection errors, timeouts, "
        "HTTP 429/502/503/504).",
        ge=0,
        le=10,
    )
    whisper_http_backoff_s: float = setting(
        0.2,
        "WHISPER_HTTP_BACKOFF_S",
        group=Group.HTTP_ENGINE,
        description="Base of the full-jitter exponential backoff between retries, in seconds.",
        gt=0,
    )
    whisper_http_max_backoff_s: float = setting(
        5.0,
        "WHISPER_HTTP_MAX_BACKOFF_S",
        group=Group.HTTP_ENGINE,
        description="Cap of the backoff, and the longest `Retry-After` honoured (a longer "
        "one gives up at once).",
        gt=0,
    )
