"""Wire protocol: round trips, and random bytes and values never escape as anything but
`ProtocolError` with a stable code."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.errors import ProtocolError
from stt_worker.protocol import (
    Chunk,
    End,
    ErrorCode,
    Start,
    StateChange,
    chunk_pcm_bytes,
    decode_client_message,
    encode_client_message,
)

CODES = {code.value for code in ErrorCode}

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "chunk", "state_change", "end", "other"])},
    optional={
        "sample_rate": msgpack_values,
        "channels": msgpack_values,
        "state": msgpack_values,
        "speaker_id": msgpack_values,
        "audio_b64": msgpack_values,
        "audio": msgpack_values,
        "timestamp": msgpack_values,
        "seq": msgpack_values,
        "session_id": msgpack_values,
    },
)


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
@given(messages)
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
