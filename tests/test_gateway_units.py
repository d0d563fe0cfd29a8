"""The gateway's pure parts with plain calls: control frames, result dialects, the outbox
policy and the access checks."""

from __future__ import annotations

import json

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.protocol import (
    Interrupt,
    SessionClosed,
    StateChange,
    Transcription,
    decode_server_message,
    encode_server_message,
)
from stt_worker.gateway.access import check_origin, check_token, presented_token
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
from stt_worker.gateway.outbox import Outbox
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
    check_origin(None, "gw:8765", allowed)  # not a browser
    check_origin("http://gw:8765", "gw:8765", allowed)  # same origin
    check_origin("https://app.example", "gw:8765", allowed)
    check_origin("https://any.example", "gw:8765", frozenset({"*"}))
    with pytest.raises(ProtocolError) as error:
        check_origin("https://evil.example", "gw:8765", allowed)
    assert error.value.code == "forbidden_origin"


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
