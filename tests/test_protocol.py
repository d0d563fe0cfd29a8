"""Wire protocol both ways: round trips, and random bytes and values never escape as anything
but `ProtocolError` with a stable code."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import (
    Chunk,
    EagerEndOfTurn,
    End,
    Error,
    ErrorCode,
    Interrupt,
    SessionClosed,
    Start,
    StateChange,
    Transcription,
    TurnResumed,
    chunk_pcm_bytes,
    decode_client_message,
    decode_server_message,
    encode_client_message,
    encode_server_message,
)
from tests.strategies import server_maps, server_messages, typed_maps

CODES = {code.value for code in ErrorCode}


def _decode(payload: bytes) -> None:
    try:
        message = decode_client_message(payload)
    except ProtocolError as exc:
        assert exc.code in CODES and exc.message
        return
    if isinstance(message, Chunk):
        try:
            chunk_pcm_bytes(message)
        except ProtocolError as exc:
            assert exc.code in CODES


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_errors(payload):
    _decode(payload)


@settings(max_examples=1500, deadline=None)
@given(typed_maps)
def test_random_typed_maps_raise_only_protocol_errors(message):
    _decode(msgpack.packb(message, use_bin_type=True))


@given(
    st.builds(Start, sample_rate=st.integers(8000, 48000), speaker_id=st.text(max_size=8))
    | st.builds(Chunk, audio=st.binary(max_size=64), seq=st.integers(0, 2**31))
    | st.builds(StateChange, state=st.sampled_from(["listening", "responding"]))
    | st.just(End())
)
def test_encode_then_decode_round_trips(message):
    assert decode_client_message(encode_client_message(message)) == message


def test_seed_start_and_unknown_extra_fields():
    assert decode_client_message(msgpack.packb({"type": "start"})) == Start()
    newer = {"type": "chunk", "audio_b64": "AAA=", "timestamp": 1.5, "codec": "pcm16"}
    assert chunk_pcm_bytes(decode_client_message(msgpack.packb(newer))) == b"\0\0"


# ---------------------------------------------------------------- output


def _decode_server(payload: bytes) -> None:
    try:
        message = decode_server_message(payload)
    except ProtocolError as exc:
        assert exc.code in CODES and exc.message
        return
    assert isinstance(
        message, Transcription | Interrupt | Error | SessionClosed | EagerEndOfTurn | TurnResumed
    )


@settings(max_examples=500, deadline=None)
@given(server_messages)
def test_server_messages_round_trip(message):
    assert decode_server_message(encode_server_message(message)) == message


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_errors_from_the_server_decoder(payload):
    _decode_server(payload)


@settings(max_examples=1500, deadline=None)
@given(server_maps)
def test_random_server_maps_raise_only_protocol_errors(message):
    _decode_server(msgpack.packb(message, use_bin_type=True))


SEED_RESULT = {
    "session_id": "s1",
    "transcript": "hello",
    "sequence": 0,
    "is_partial": False,
    "is_final": True,
    "timestamp": 1.5,
    "speaker_id": None,
    "has_voice_activity": True,
    "state": "listening",
}


def test_the_seeds_typeless_result_is_a_transcription_and_extra_fields_are_ignored():
    seed = decode_server_message(msgpack.packb(SEED_RESULT))
    assert seed == Transcription(**SEED_RESULT)  # type: ignore[arg-type]
    assert seed.type == "transcript"
    newer = {**SEED_RESULT, "type": "interrupt", "confidence": 0.9, "words": [1, 2]}
    assert decode_server_message(msgpack.packb(newer)) == Interrupt(
        "s1", 1.5, None, transcript="hello"
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc1", "malformed_msgpack"),
        (msgpack.packb([1, 2]), "not_a_map"),
        (msgpack.packb({**SEED_RESULT, "type": "partial"}), "unknown_type"),
        (msgpack.packb({**SEED_RESULT, "type": 7}), "unknown_type"),
        (msgpack.packb({**SEED_RESULT, "is_final": "yes"}), "invalid_field"),
        (msgpack.packb({"session_id": "s1"}), "invalid_field"),
        (msgpack.packb({"type": "error", "session_id": "s1"}), "invalid_field"),
    ],
)
def test_server_messages_that_are_not_raise_with_a_code(payload: bytes, code: str):
    with pytest.raises(ProtocolError) as error:
        decode_server_message(payload)
    assert error.value.code == code


# ------------------------------------------------------------------ hostile input

DEEP = b"\x91" * 100_000 + b"\x01"  # 100,000 nested one-element arrays


@pytest.mark.parametrize(
    "payload",
    [
        DEEP,
        b"\x81\xa4type" + DEEP,  # the type itself
        b"\x82\xa4type\xa3end\xa1x" + DEEP,  # an unknown field a valid message would skip
        b"\x82\xa4type\xa5start\xaaspeaker_id" + DEEP,  # a known field
        b"\x81\xa1x" * 100_000 + b"\x01",  # nested maps
        b"\x82\xa4type\xa3bad\xa1x" + DEEP,  # an unknown type beside a deep field
    ],
    ids=["top", "type", "unknown_field", "known_field", "maps", "bad_type"],
)
def test_deep_nesting_is_malformed_not_a_failure(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_message(payload)
    assert caught.value.code == ErrorCode.MALFORMED_MSGPACK, caught.value


@pytest.mark.parametrize(
    "message, code",
    [
        ({"type": "x" * 900_000}, ErrorCode.UNKNOWN_TYPE),
        ({"type": ["y" * 1000] * 1000}, ErrorCode.UNKNOWN_TYPE),
        ({"type": {"z" * 1000: "w" * 1000}}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "state_change", "state": "s" * 900_000}, ErrorCode.INVALID_FIELD),
        ({"type": "start", "language": "l" * 900_000}, ErrorCode.INVALID_FIELD),
        (["v" * 900_000], ErrorCode.NOT_A_MAP),
    ],
    ids=["long_type", "array_type", "map_type", "long_state", "long_language", "not_a_map"],
)
def test_errors_echo_at_most_200_characters_of_input(message: object, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_message(msgpack.packb(message))
    assert caught.value.code == code
    text = caught.value.message
    # Whatever the message says, no run of the client's filler characters passes 200.
    longest = max(len(run) for run in text.replace("'", " ").replace('"', " ").split())
    assert longest <= 200 + len("..."), text[:400]
    assert len(text) < 600, text[:400]


def test_turn_events_on_the_wire_dispatch_on_their_type():
    eager = EagerEndOfTurn("s1", 2, 7, "Turn it off.", 1.5, "alice", 0.3, 1.9, "en", 81.2)
    wire = msgpack.unpackb(encode_server_message(eager))
    assert wire["type"] == "eager_end_of_turn" and wire["text"] == "Turn it off."
    assert (wire["utterance_id"], wire["sequence"]) == (2, 7)
    assert "is_final" not in wire and "transcript" not in wire  # no seed consumer's final
    resumed = {"type": "turn_resumed", "session_id": "s1", "utterance_id": 2, "sequence": 8}
    assert decode_server_message(msgpack.packb({**resumed, "timestamp": 2.0})) == TurnResumed(
        "s1", 2, 8, 2.0
    )
