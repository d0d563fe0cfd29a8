"""Wire protocol: round trips, and random bytes and values never escape as anything but
`ProtocolError` with a stable code."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import (
    Chunk,
    End,
    ErrorCode,
    Start,
    StateChange,
    chunk_pcm_bytes,
    decode_client_message,
    encode_client_message,
)
from tests.strategies import typed_maps

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
