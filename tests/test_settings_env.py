"""Settings come from their documented variables only, never from a bare field name."""

from __future__ import annotations

import pytest

from stt_worker.config import load_settings
from stt_worker.gateway.settings import GatewaySettings


def test_bare_field_names_in_the_environment_configure_nothing(monkeypatch: pytest.MonkeyPatch):
    # Names that platforms and shells set for their own reasons (PORT on most PaaS).
    for name, value in {"PORT": "1234", "HOST": "0.0.0.0", "TOKEN": "x", "DURABLE": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ENGINE", "http")
    settings, gateway = load_settings(), GatewaySettings()
    assert settings.durable is False and settings.engine == "faster-whisper"
    assert (gateway.port, gateway.host, gateway.token) == (8765, "127.0.0.1", None)


def test_documented_variables_and_keyword_names_still_configure(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STT_DURABLE", "true")
    monkeypatch.setenv("stt_gateway_port", "9999")  # variables match whatever their case
    monkeypatch.setenv("NATS_CREDS", __file__)  # the second of NATS_CREDS_FILE's aliases
    settings = load_settings()
    assert settings.durable is True and str(settings.nats_creds_file) == __file__
    assert GatewaySettings().port == 9999
    assert load_settings(durable=False).durable is False  # code may still name fields


@pytest.mark.parametrize(
    ("value", "durable", "taken"),
    [
        (None, False, True),  # auto: on in core NATS
        (None, True, False),  # ... and off in durable mode
        ("auto", False, True),
        ("false", False, False),
        ("0", False, False),
        ("true", False, True),  # the opt-in of earlier releases still reads
    ],
)
def test_session_connections_auto_follows_the_nats_mode(
    monkeypatch: pytest.MonkeyPatch, value: str | None, durable: bool, taken: bool
):
    if value is not None:
        monkeypatch.setenv("STT_SESSION_CONNECTIONS", value)
    monkeypatch.setenv("STT_DURABLE", str(durable).lower())
    assert load_settings().takes_session_connections() is taken


def test_session_connections_asked_for_in_durable_mode_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("STT_SESSION_CONNECTIONS", "true")
    monkeypatch.setenv("STT_DURABLE", "true")
    with pytest.raises(ValueError, match="core NATS"):
        load_settings().takes_session_connections()
    monkeypatch.setenv("STT_SESSION_CONNECTIONS", "maybe")
    with pytest.raises(ValueError, match="STT_SESSION_CONNECTIONS"):
        load_settings()
