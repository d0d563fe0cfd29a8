"""The whisper-server's pure parts with plain calls: the prompt cut, the admission stages,
the bearer-token check and the loopback test."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Scope

from stt_worker.config import load_settings
from stt_worker.whisper_server.access import ApiKeyGate
from stt_worker.whisper_server.admission import Admission
from stt_worker.whisper_server.process import api_key, is_loopback
from stt_worker.whisper_server.prompt import PROMPT_MAX_CHARS, bounded_prompt
from stt_worker.whisper_server.responses import RequestError

KEY = "sk-unit-7f2d"


# ---------------------------------------------------------------- the prompt


def test_a_short_prompt_passes_as_it_is() -> None:
    assert bounded_prompt("Kennedy, inaugural address.") == "Kennedy, inaugural address."
    assert bounded_prompt(None) is None
    assert bounded_prompt("   ") is None


def test_a_long_prompt_keeps_its_last_words() -> None:
    words = " ".join(f"word{n}" for n in range(5_000))
    kept = bounded_prompt(words)
    assert kept is not None and len(kept) <= PROMPT_MAX_CHARS
    assert words.endswith(kept) and kept.endswith("word4999")
    assert kept.startswith("word")  # a whole word, not the tail of one
    assert len(kept) > PROMPT_MAX_CHARS - len(" word4999")


def test_a_prompt_without_spaces_is_cut_at_the_bound() -> None:
    text = "語" * 60_000
    assert bounded_prompt(text) == "語" * PROMPT_MAX_CHARS


# ---------------------------------------------------------------- admission


def test_uploads_do_not_take_places_in_the_queue() -> None:
    admission = Admission(max_uploads=2, capacity=1)
    with admission.upload(), admission.upload():
        with pytest.raises(RequestError) as busy, admission.upload():
            pass
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        admission.check_queue()  # two uploads in progress, the queue still empty
        with admission.queue(), pytest.raises(RequestError):
            admission.check_queue()
    assert (admission.uploading, admission.queued) == (0, 0)


def test_places_are_given_back_when_a_request_fails() -> None:
    admission = Admission(max_uploads=1, capacity=1)
    with pytest.raises(ValueError), admission.queue():
        raise ValueError("decoding failed")
    with pytest.raises(ValueError), admission.upload():
        raise ValueError("client went away")
    with admission.upload(), admission.queue():
        assert (admission.uploading, admission.queued) == (1, 1)


# ---------------------------------------------------------------- the key


async def _status(gate: ApiKeyGate, path: str, *headers: tuple[bytes, bytes]) -> int:
    sent: list[Message] = []
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": list(headers),
        "client": ("10.0.0.9", 4000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return int(sent[0]["status"])


async def _ok(scope: Scope, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


async def test_the_gate_wants_the_exact_bearer_key() -> None:
    gate = ApiKeyGate(_ok, key=KEY, open_paths=frozenset({"/health"}))
    auth = b"authorization"
    cases = {
        (): 401,
        ((auth, f"Bearer {KEY}".encode()),): 200,
        ((auth, f"BEARER  {KEY} ".encode()),): 200,
        ((auth, f"Bearer {KEY}x".encode()),): 401,
        ((auth, f"Bearer {KEY[:-1]}".encode()),): 401,
        ((auth, KEY.encode()),): 401,
        ((auth, b"Bearer "),): 401,
        ((auth, f"Basic {KEY}".encode()),): 401,
    }
    statuses = await asyncio.gather(*(_status(gate, "/v1/models", *h) for h in cases))
    assert dict(zip(cases, statuses, strict=True)) == cases
    assert await _status(gate, "/health") == 200


def test_an_empty_key_is_no_key() -> None:
    with pytest.raises(ValueError):
        ApiKeyGate(_ok, key="", open_paths=frozenset())
    assert api_key(load_settings(whisper_api_key="")) is None
    assert api_key(load_settings(whisper_api_key=KEY)) == KEY
    assert api_key(load_settings(whisper_api_key=None)) is None


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "whisper.example", ""):
        assert not is_loopback(host), host


def test_the_cli_default_is_loopback() -> None:
    assert load_settings().whisper_server_host == "127.0.0.1"
