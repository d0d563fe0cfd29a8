"""The gateway's pure parts with plain calls: control frames, result dialects, the outbox
policy and the access checks."""

from __future__ import annotations

import json
import logging

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.protocol import (
    Error,
    Interrupt,
    SessionClosed,
    StateChange,
    Transcription,
    decode_server_message,
    encode_server_message,
)
from stt_worker.gateway.access import (
    TokenRedaction,
    check_host,
    check_origin,
    check_token,
    presented_token,
    redact_token,
)
from stt_worker.gateway.control import (
    End,
    Flush,
    Reset,
    Start,
    dialect_of,
    parse_binary,
    parse_dialect,
    parse_text,
)
from stt_worker.gateway.dialect import EmptyFinal, GatewayError, is_partial, render
from stt_worker.gateway.limits import AddressSlots, ErrorBudget
from stt_worker.gateway.namespace import ADDED_CHARS, SessionNamespace
from stt_worker.gateway.outbox import Outbox
from stt_worker.gateway.settings import GatewaySettings
from tests.strategies import server_messages


@pytest.mark.parametrize(
    ("frame", "control", "dialect"),
    [
        ('{"type": "start", "sample_rate": 48000}', Start(sample_rate=48000), "native"),
        ('{"type": "start"}', Start(), "native"),
        ('{"type": "state_change", "state": "responding"}', StateChange("responding"), "native"),
        ('{"type": "end"}', End(), "native"),
        ('{"type": "final"}', Flush(), "onnx"),
        ('{"type": "reset"}', Reset(), "onnx"),
        ("__CTRL__:EOS", Flush(), "parakeet"),
        ("__CTRL__:RESET", Reset(), "parakeet"),
        ("RESET", Reset(), "parakeet"),
        (" __CTRL__:EOS\n", Flush(), "parakeet"),
    ],
)
def test_text_control_forms(frame: str, control: object, dialect: str) -> None:
    assert parse_text(frame) == control
    assert dialect_of(frame, control) == dialect


def test_binary_frames_are_audio_or_parakeet_control_words() -> None:
    assert parse_binary(b"__CTRL__:EOS") == Flush()
    assert parse_binary(b"__CTRL__:RESET") == Reset()
    assert parse_binary(b"\x01\x00\x02\x00") == b"\x01\x00\x02\x00"
    with pytest.raises(ProtocolError) as odd:
        parse_binary(b"\x01\x00\x02")
    assert odd.value.code == "invalid_audio"
    with pytest.raises(ProtocolError) as unknown:
        parse_binary(b"__CTRL__:\xff\xfe")
    assert unknown.value.code == "unknown_type"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "malformed_json"),
        ("", "malformed_json"),
        ("42", "not_a_map"),
        ('{"sample_rate": 16000}', "missing_type"),
        ('{"type": "chunk", "audio_b64": ""}', "unknown_type"),
        ('{"type": "start", "sample_rate": "fast"}', "invalid_field"),
        ('{"type": "start", "language": "not a language"}', "invalid_field"),
        ("__CTRL__:PAUSE", "unknown_type"),
    ],
)
def test_bad_control_frames_raise_with_a_code(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_text(frame)
    assert error.value.code == code


@given(st.text(max_size=200))
def test_any_text_is_a_control_or_a_protocol_error(frame: str) -> None:
    try:
        parse_text(frame)
    except ProtocolError as error:
        assert error.code


def test_dialect_query_values() -> None:
    assert parse_dialect(None) is None
    assert parse_dialect("") is None
    assert [parse_dialect(value) for value in ("native", "parakeet", "onnx")] == [
        "native",
        "parakeet",
        "onnx",
    ]
    with pytest.raises(ProtocolError):
        parse_dialect("nemo")


TRANSCRIPT = Transcription(
    session_id="s",
    transcript="hello world",
    sequence=0,
    is_partial=True,
    is_final=False,
    timestamp=0.0,
    speaker_id=None,
    has_voice_activity=True,
    state="listening",
    audio_end_s=1.5,
)


def wire(message: object) -> dict:
    """The message as the worker's bytes carry it."""
    return msgpack.unpackb(encode_server_message(message), raw=False)  # type: ignore[arg-type]


def test_results_per_dialect() -> None:
    native = json.loads(render(TRANSCRIPT, "native") or "")
    assert native == {**wire(TRANSCRIPT), "text": "hello world"}
    assert json.loads(render(TRANSCRIPT, "onnx") or "") == native
    parakeet = json.loads(render(TRANSCRIPT, "parakeet") or "")
    assert (parakeet["type"], parakeet["text"]) == ("partial", "hello world")
    final = msgspec.structs.replace(TRANSCRIPT, is_partial=False, is_final=True)
    assert json.loads(render(final, "parakeet") or "")["type"] == "final"
    interrupt = Interrupt(session_id="s", timestamp=0.0, speaker_id=None)
    assert json.loads(render(interrupt, "parakeet") or "") == wire(interrupt)
    closed = SessionClosed(
        session_id="s", reason="end", timestamp=0.0, speaker_id=None, utterances=0
    )
    assert render(closed, "native") is not None
    assert render(closed, "parakeet") is None and render(closed, "onnx") is None


def _frame_before_typing(message: dict, dialect: str) -> str | None:
    """How the gateway rendered the worker's decoded msgpack map before it was typed."""
    kind = message.get("type")
    if kind == "session_closed" and dialect != "native":
        return None
    if kind == "transcript":
        message = {**message, "text": message.get("transcript", "")}
        if dialect == "parakeet":
            message["type"] = "final" if message.get("is_final") else "partial"
    return msgspec.json.encode(message).decode()


@settings(max_examples=300, deadline=None)
@given(server_messages, st.sampled_from(["native", "parakeet", "onnx"]))
def test_frames_are_byte_for_byte_what_they_were(message: object, dialect: str) -> None:
    payload = encode_server_message(message)  # type: ignore[arg-type]
    decoded = decode_server_message(payload)
    assert render(decoded, dialect) == _frame_before_typing(wire(message), dialect)  # type: ignore[arg-type]


def test_the_gateways_own_frames_keep_their_shape() -> None:
    empty = render(EmptyFinal(session_id="s~2"), "native")
    assert empty == (
        '{"type":"transcript","session_id":"s~2","transcript":"","is_partial":false,'
        '"is_final":true,"end_reason":"end","text":""}'
    )
    assert json.loads(render(EmptyFinal(session_id="s"), "parakeet") or "")["type"] == "final"
    error = GatewayError(code=ErrorCode.SESSION_ENDED, message="no", session_id=None)
    assert render(error, "parakeet") == (
        '{"type":"error","code":"session_ended","message":"no","session_id":null}'
    )
    assert not is_partial(EmptyFinal(session_id="s")) and is_partial(TRANSCRIPT)


def test_outbox_drops_partials_first_and_refuses_to_drop_finals() -> None:
    outbox = Outbox(3)
    assert outbox.push("p1", partial=True)
    assert outbox.push("f1", partial=False)
    assert outbox.push("p2", partial=True)
    assert outbox.push("p3", partial=True)  # evicts p1, the oldest partial
    assert outbox.queued_chars == len("f1p2p3")
    assert outbox.push("f2", partial=False)  # evicts p2
    assert outbox.dropped_partials == 2
    assert outbox.push("f3", partial=False)  # evicts p3
    assert outbox.push("p4", partial=True)  # nothing to evict: p4 itself is dropped
    assert outbox.dropped_partials == 4
    assert not outbox.push("f4", partial=False)  # a final would be lost
    assert [outbox.pop() for _ in range(4)] == ["f1", "f2", "f3", None]


@given(st.lists(st.booleans(), max_size=100), st.integers(1, 10))
def test_outbox_never_exceeds_its_bound_nor_loses_a_final(partials: list[bool], size: int) -> None:
    outbox = Outbox(size)
    accepted_finals = []
    for index, partial in enumerate(partials):
        if outbox.push(str(index), partial=partial) and not partial:
            accepted_finals.append(str(index))
        assert len(outbox) <= size
    remaining = []
    while (frame := outbox.pop()) is not None:
        remaining.append(frame)
    assert [frame for frame in remaining if not partials[int(frame)]] == accepted_finals


def test_origin_checks() -> None:
    allowed = frozenset({"https://app.example"})
    check_origin(None, "http", "gw:8765", allowed)  # not a browser
    check_origin("http://gw:8765", "http", "gw:8765", allowed)  # same origin
    check_origin("https://gw:8765", "https", "gw:8765", allowed)  # same origin over TLS
    check_origin("https://app.example", "http", "gw:8765", allowed)
    check_origin("https://any.example", "http", "gw:8765", frozenset({"*"}))
    for origin, scheme in [
        ("https://evil.example", "http"),
        ("https://gw:8765", "http"),  # another scheme is another origin
        ("http://gw:8765", "https"),
        ("HTTP://GW:8765", "http"),  # no browser sends it: not the gateway's
        ("http://gw:8766", "http"),
        ("http://gw:8765.evil.example", "http"),
        ("https://app.example.evil", "http"),
    ]:
        with pytest.raises(ProtocolError) as error:
            check_origin(origin, scheme, "gw:8765", allowed)
        assert error.value.code == "forbidden_origin", origin


def test_host_checks() -> None:
    names = frozenset({"localhost", "127.0.0.1", "::1", "gw.example"})
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765", "GW.example:443", "gw.example"):
        check_host(host, names)
    check_host("rebound.evil.example:8765", frozenset({"*"}))
    for host in (None, "", "rebound.evil.example:8765", "gw.example.evil", "[::2]:8765"):
        with pytest.raises(ProtocolError) as error:
            check_host(host, names)
        assert error.value.code == "forbidden_host", host


def test_allowed_hosts_default_to_loopback_and_the_listen_address() -> None:
    assert GatewaySettings().hosts == {"localhost", "127.0.0.1", "::1"}
    assert GatewaySettings(host="10.0.0.5").hosts == {"localhost", "127.0.0.1", "::1", "10.0.0.5"}
    assert GatewaySettings(host="0.0.0.0").hosts == {"localhost", "127.0.0.1", "::1"}
    named = GatewaySettings(allowed_hosts="Captions.example:443, gw")
    assert named.hosts == {"captions.example", "gw"}
    assert GatewaySettings(allowed_hosts="*").hosts == {"*"}
    assert GatewaySettings(allowed_origins="HTTPS://App.example/").origins == {
        "https://app.example"
    }


def test_tokens_are_redacted_from_logged_urls() -> None:
    assert redact_token('127.0.0.1:5 - "WebSocket /ws?token=s3cret&x=1" [accepted]') == (
        '127.0.0.1:5 - "WebSocket /ws?token=***&x=1" [accepted]'
    )
    assert redact_token("/ws?protocol=onnx&TOKEN=s3cret") == "/ws?protocol=onnx&TOKEN=***"
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s"', ("a", "/?token=s3"), None
    )
    assert TokenRedaction().filter(record)
    assert record.getMessage() == 'a - "WebSocket /?token=***"'


def test_session_namespace_scopes_names_by_gateway_and_credential() -> None:
    one, other = SessionNamespace(), SessionNamespace()
    assert one.instance != other.instance
    scope = one.scope("token-a")
    assert scope == one.scope("token-a") != one.scope("token-b") != one.scope(None)
    worker_id = one.worker_id(scope, "victim")
    assert worker_id.startswith("gw-") and worker_id.endswith("-victim")
    assert len(worker_id) == ADDED_CHARS + len("victim")
    assert worker_id != other.worker_id(other.scope("token-a"), "victim")


def test_address_slots() -> None:
    slots = AddressSlots(2)
    assert slots.take("a") and slots.take("a") and not slots.take("a")
    assert slots.take("b")
    slots.give_back("a")
    assert slots.take("a")
    for _ in range(2):
        slots.give_back("a")
    slots.give_back("b")
    assert len(slots) == 0  # nothing kept for addresses that left


def test_error_budget() -> None:
    budget = ErrorBudget(burst=3, per_s=2.0)
    assert [budget.spend(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert budget.take_withheld() == 2 and budget.take_withheld() == 0
    assert budget.spend(0.5) and not budget.spend(0.5)  # one token back after 0.5 s
    assert [budget.spend(100.0) for _ in range(4)] == [True, True, True, False]  # burst caps


def test_error_frames_are_cut_to_a_bounded_size() -> None:
    huge = "\u0085" * 130_000
    error = GatewayError(code=ErrorCode.INVALID_FIELD, message=repr(huge))
    frame = render(error, "native") or ""
    assert len(frame.encode()) < 2_000
    assert json.loads(frame)["message"].endswith("…")
    worker = Error(session_id="s", code="engine_error", message=huge, timestamp=0.0)
    assert len((render(worker, "onnx") or "").encode()) < 2_000


def test_token_checks() -> None:
    assert presented_token({"token": "q"}, {}, []) == ("q", None)
    assert presented_token({}, {"authorization": "Bearer h"}, []) == ("h", None)
    assert presented_token({}, {}, ["chat", "token.p"]) == ("p", "token.p")
    check_token(None, None)
    check_token("anything", None)
    check_token("right", "right")
    for presented in (None, "wrong", ""):
        with pytest.raises(ProtocolError) as error:
            check_token(presented, "right")
        assert error.value.code == "unauthorized"
