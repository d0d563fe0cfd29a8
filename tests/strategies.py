"""Hypothesis strategies for input messages, shared by the decoder's and the worker's fuzzing."""

from __future__ import annotations

from hypothesis import strategies as st

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

# Any value in any field of any message type (and of an unknown one).
typed_maps = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "chunk", "playback", "state_change", "end", "other"])},
    optional={
        "sample_rate": msgpack_values,
        "channels": msgpack_values,
        "state": msgpack_values,
        "speaker_id": msgpack_values,
        "language": msgpack_values,
        "audio_b64": msgpack_values,
        "audio": msgpack_values,
        "timestamp": msgpack_values,
        "seq": msgpack_values,
        "session_id": msgpack_values,
    },
)
