"""Hypothesis strategies for input messages, shared by the decoder's and the worker's fuzzing,
and for output messages (the server decoder's round trips)."""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    ErrorCode,
    Interrupt,
    SessionClosed,
    Transcription,
    TurnResumed,
)

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

# ---------------------------------------------------------------- output messages

_finite = st.floats(allow_nan=False, allow_infinity=False)
_speaker_ids = st.none() | st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1)
_states = st.sampled_from(["listening", "responding"])
_close_reasons = st.sampled_from(["end", "idle", "shutdown", "max_duration"])
_end_reasons = st.none() | st.sampled_from(
    [
        "silence",
        "size",
        "timeout",
        "responding",
        "restart",
        "end",
        "idle",
        "shutdown",
        "max_duration",
    ]
)
_source_seqs = st.just(msgspec.UNSET) | st.integers(0, 2**63 - 1)

# Every output message the worker can publish, every field drawn.
server_messages = (
    st.builds(
        Transcription,
        session_id=st.text(max_size=12),
        transcript=st.text(max_size=30),
        sequence=st.integers(0, 2**32),
        is_partial=st.booleans(),
        is_final=st.booleans(),
        timestamp=_finite,
        speaker_id=_speaker_ids,
        has_voice_activity=st.booleans(),
        state=_states,
        utterance_id=st.integers(0, 2**32),
        audio_start_s=_finite,
        audio_end_s=_finite,
        language=st.none() | st.sampled_from(["en", "de", "haw"]),
        inference_ms=_finite,
        stable_chars=st.integers(0, 100),
        end_reason=_end_reasons,
        backchannel=st.booleans(),
        source_seq_first=_source_seqs,
        source_seq_last=_source_seqs,
    )
    | st.builds(
        Interrupt,
        session_id=st.text(max_size=12),
        timestamp=_finite,
        speaker_id=_speaker_ids,
        utterance_id=st.integers(0, 2**32),
        transcript=st.none() | st.text(max_size=20),
    )
    | st.builds(
        Error,
        session_id=st.text(max_size=12),
        code=st.sampled_from([code.value for code in ErrorCode]),
        message=st.text(max_size=40),
        timestamp=_finite,
        speaker_id=_speaker_ids,
        utterance_id=st.none() | st.integers(0, 2**32),
    )
    | st.builds(
        SessionClosed,
        session_id=st.text(max_size=12),
        reason=_close_reasons,
        timestamp=_finite,
        speaker_id=_speaker_ids,
        utterances=st.integers(0, 2**32),
    )
    | st.builds(
        EagerEndOfTurn,
        session_id=st.text(max_size=12),
        utterance_id=st.integers(0, 2**32),
        sequence=st.integers(0, 2**32),
        text=st.text(max_size=30),
        timestamp=_finite,
        speaker_id=_speaker_ids,
        audio_start_s=_finite,
        audio_end_s=_finite,
        language=st.none() | st.sampled_from(["en", "de"]),
        inference_ms=_finite,
    )
    | st.builds(
        TurnResumed,
        session_id=st.text(max_size=12),
        utterance_id=st.integers(0, 2**32),
        sequence=st.integers(0, 2**32),
        timestamp=_finite,
        speaker_id=_speaker_ids,
        audio_start_s=_finite,
        audio_end_s=_finite,
    )
)

# Any value in any field of any output type (the seed's typeless result and an unknown one).
server_maps = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            [
                "transcript",
                "interrupt",
                "error",
                "session_closed",
                "eager_end_of_turn",
                "turn_resumed",
                "other",
            ]
        )
        | msgpack_values,
        "session_id": msgpack_values,
        "transcript": msgpack_values,
        "sequence": msgpack_values,
        "is_partial": msgpack_values,
        "is_final": msgpack_values,
        "timestamp": msgpack_values,
        "speaker_id": msgpack_values,
        "has_voice_activity": msgpack_values,
        "state": msgpack_values,
        "code": msgpack_values,
        "message": msgpack_values,
        "reason": msgpack_values,
        "utterances": msgpack_values,
        "end_reason": msgpack_values,
        "utterance_id": msgpack_values,
        "text": msgpack_values,
    },
)
