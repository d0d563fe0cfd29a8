"""Wire messages: the seed's msgpack protocol as typed structs, decoded once at the edge.

Input on ``ai.voice.stream.{session_id}``: ``start``, ``chunk``, ``state_change``, ``end``.
Output on ``ai.voice.transcription.{session_id}``: transcription results (the seed's fields
plus additive ones), ``interrupt``, the additive ``error`` and ``session_closed``, and the
opt-in turn events ``eager_end_of_turn`` and ``turn_resumed``.
Both ways are typed: the worker decodes input with `decode_client_message` and encodes
output with `encode_server_message`; clients (the gateway, the tools, the evaluation) decode
output with `decode_server_message`. Unknown extra fields are ignored both ways, so that
newer publishers and newer workers keep older peers working.
"""

from __future__ import annotations

import binascii
import re
import reprlib
from typing import Annotated, Any, Literal

import msgspec

# `ErrorCode` is imported from here too: the registry lives in errors.py.
from stt_worker.core.errors import ErrorCode, ProtocolError

State = Literal["listening", "responding"]
# Why a session closed: `end`, idle eviction, worker shutdown (drain), or its life reached
# STT_MAX_SESSION_S.
CloseReason = Literal["end", "idle", "shutdown", "max_duration"]
# Why an utterance's final was cut where it was: trailing silence (the endpoint), the length
# bound, a session close (as above), no audio for the chunk timeout, a `state_change` to
# responding, or a repeated `start`.
EndReason = Literal["silence", "size", "timeout", "responding", "restart"] | CloseReason
SpeakerId = str | int | None
# What Whisper does with the speech: write it down, or translate it into English.
Task = Literal["transcribe", "translate"]

# Echoed in every message of the session: bounded, so one `start` cannot inflate them all.
MAX_SPEAKER_ID_CHARS = 256
# Whisper's language codes are two or three letters ("en", "haw"); a BCP 47 tag such as
# "en-US" is accepted and taken down to its language (`whisper_language`). Anything else
# would reach the engine (or an HTTP backend's form) only to fail there.
LANGUAGE_PATTERN = "^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$"


def whisper_language(tag: str | None) -> str | None:
    """ "en-US" -> "en": the part of a language tag Whisper knows."""
    return tag.replace("_", "-").split("-", 1)[0].lower() if tag else None


# Session ids become the last token of output subjects: any printable ASCII but the
# wildcards `*` and `>` (a publisher's ids such as "user#42/turn~3" keep working). NATS
# itself delivers `*`, `>`, control and non-ASCII characters published as literal tokens,
# so the worker cannot rely on the server to keep them out.
SESSION_ID_PATTERN = re.compile(r"[!-)+-=?-~]+")


# ---------------------------------------------------------------- input


class Start(msgspec.Struct, tag="start", tag_field="type", frozen=True):
    session_id: str | None = None
    sample_rate: int = 16_000
    channels: int = 1
    state: State = "listening"
    speaker_id: Annotated[str, msgspec.Meta(max_length=MAX_SPEAKER_ID_CHARS)] | int | None = None
    language: Annotated[str, msgspec.Meta(pattern=LANGUAGE_PATTERN)] | None = None
    # Additive per-session options (`core/options.py` checks them, docs/protocol.md lists
    # them). Typed loosely on purpose: a bad value is refused for its field alone, with an
    # `invalid_field` error, and the session goes on with that field's default.
    prompt: Any = None
    task: Any = None
    partials: Any = None
    word_timestamps: Any = None
    endpoint_mode: Any = None
    endpoint_silence_ms: Any = None
    endpoint_min_silence_ms: Any = None
    endpoint_max_silence_ms: Any = None
    turn_max_ms: Any = None
    barge_in_mode: Any = None
    interrupt_min_speech_ms: Any = None
    barge_in_probe_ms: Any = None
    turn_events: Any = None


class Chunk(msgspec.Struct, tag="chunk", tag_field="type", frozen=True):
    audio_b64: str | None = None
    # Additive: raw PCM16 as msgpack bin, a third smaller and no base64 work.
    audio: bytes | None = None
    timestamp: float | None = None
    # Additive: publisher's chunk counter; repeats and late chunks are reported, not mixed in.
    seq: int | None = None


class Playback(msgspec.Struct, tag="playback", tag_field="type", frozen=True):
    """Additive: the audio the assistant is playing, sent as it plays (PCM16, like a chunk;
    the session's sample rate and channels unless given). The worker cancels its echo from
    the microphone audio, so the assistant's own voice cannot barge in on itself."""

    audio_b64: str | None = None
    audio: bytes | None = None
    sample_rate: int | None = None
    channels: int | None = None


class StateChange(msgspec.Struct, tag="state_change", tag_field="type", frozen=True):
    state: State


class End(msgspec.Struct, tag="end", tag_field="type", frozen=True):
    pass


ClientMessage = Start | Chunk | Playback | StateChange | End

_decoder = msgspec.msgpack.Decoder(ClientMessage)
_any_decoder = msgspec.msgpack.Decoder()
# The error path reads only the top level: each value stays undecoded bytes (`Raw`), so a
# huge or deeply nested field costs no objects and no recursion.
_top_decoder = msgspec.msgpack.Decoder(dict[Any, msgspec.Raw])
_raw_decoder = msgspec.msgpack.Decoder(msgspec.Raw)
_TYPES = {"start", "chunk", "playback", "state_change", "end"}

# The most characters of client input any error message (reply or log line) carries.
MAX_ECHO_CHARS = 200
# A `type` value up to this many bytes is decoded to be shown; it cannot nest deeper than its
# byte count, far below the decoder's recursion limit.
_SHOWN_VALUE_BYTES = 256


def decode_client_message(payload: bytes) -> ClientMessage:
    """Decode one input message or raise `ProtocolError` with a stable code.

    Our messages are flat maps, so nesting has no use: msgspec's recursion guard ends a deeply
    nested payload (anywhere, unknown fields included) before it builds it, and that is
    reported as `malformed_msgpack`, not as a failure of the worker."""
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        # Only the error path decodes twice: the typed decoder cannot say *why* it failed.
        raise _explain(payload, exc) from exc
    except _MALFORMED as exc:
        raise _malformed(exc) from exc
    except RecursionError as exc:
        raise _too_deep() from exc


# msgspec raises UnicodeDecodeError, not DecodeError, for a str that is not UTF-8.
_MALFORMED = (msgspec.DecodeError, UnicodeDecodeError)


def _malformed(exc: Exception) -> ProtocolError:
    return ProtocolError(
        f"payload is not valid msgpack: {clip(str(exc))}", code=ErrorCode.MALFORMED_MSGPACK
    )


def _too_deep() -> ProtocolError:
    return ProtocolError(
        "payload is nested too deeply to read (messages are flat maps)",
        code=ErrorCode.MALFORMED_MSGPACK,
    )


def _explain(payload: bytes, exc: msgspec.ValidationError) -> ProtocolError:
    """Why a payload is not a client message, reading only its top level."""
    try:
        return _explain_top_level(payload, exc)
    except _MALFORMED as malformed:
        return _malformed(malformed)
    except RecursionError:
        return _too_deep()


def _explain_top_level(payload: bytes, exc: msgspec.ValidationError) -> ProtocolError:
    try:
        top = _top_decoder.decode(payload)
    except msgspec.ValidationError:
        # Not a map: checked to be well-formed by skipping over it, building nothing.
        _raw_decoder.decode(payload)
        return classify_invalid(_Opaque(_msgpack_kind(payload)), exc, types=sorted(_TYPES))
    raw: dict[Any, Any] = {key: None for key in top}
    if "type" in top:
        raw["type"] = _shown_value(top["type"])
    return classify_invalid(raw, exc, types=sorted(_TYPES))


class _Opaque:
    """Stands for a value too large (or not worth) decoding: shown by its kind alone."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _shown_value(raw: msgspec.Raw) -> Any:
    """A top-level value decoded for an error message: a string of any length (flat, then
    clipped by `shown`), or anything small; else only its kind."""
    data = bytes(raw)
    kind = _msgpack_kind(data)
    if kind == "str" or len(data) <= _SHOWN_VALUE_BYTES:
        try:
            return _any_decoder.decode(data)
        except (*_MALFORMED, RecursionError):
            pass
    return _Opaque(kind)


def _msgpack_kind(data: bytes) -> str:
    """The Python type name a msgpack value decodes to, from its first byte."""
    first = data[0] if data else 0xC1
    if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
        return "int"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "dict"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "list"
    if 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB):
        return "str"
    if first in (0xC4, 0xC5, 0xC6):
        return "bytes"
    if first in (0xCA, 0xCB):
        return "float"
    if first in (0xC2, 0xC3):
        return "bool"
    if first == 0xC0:
        return "NoneType"
    return "ext"


_repr = reprlib.Repr()  # Python 3.11's takes its limits as attributes, not arguments
_repr.maxlevel, _repr.maxlist, _repr.maxdict = 3, 8, 8
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_ECHO_CHARS


def shown(value: Any) -> str:
    """`value`'s repr for an error message: at most `MAX_ECHO_CHARS` characters of it, built
    without ever rendering the whole of a huge value."""
    return clip(_repr.repr(value))


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def classify_invalid(
    raw: Any,
    exc: msgspec.ValidationError,
    *,
    types: list[str],
    noun: str = "message",
    container: str = "a msgpack map",
    hint: str = "",
) -> ProtocolError:
    """Why a decoded `raw` payload is not a valid tagged message, with the stable code for
    each case: not a map, no `type`, an unknown `type`, or a field that does not fit. Client
    input in the message (the `type`, the decoder's complaint) is cut to `MAX_ECHO_CHARS`."""
    if isinstance(raw, _Opaque) and raw.kind == "dict":
        return ProtocolError(f"{noun} has keys that cannot be read", code=ErrorCode.INVALID_MESSAGE)
    if isinstance(raw, _Opaque):
        return ProtocolError(
            f"{noun} must be {container}, got {raw.kind}", code=ErrorCode.NOT_A_MAP
        )
    if not isinstance(raw, dict):
        return ProtocolError(
            f"{noun} must be {container}, got {type(raw).__name__}", code=ErrorCode.NOT_A_MAP
        )
    if "type" not in raw:
        return ProtocolError(f"{noun} has no 'type' field", code=ErrorCode.MISSING_TYPE)
    kind = raw["type"]
    if not isinstance(kind, str) or kind not in types:
        return ProtocolError(
            f"unknown {noun} type {shown(kind)}; expected one of {types}{hint}",
            code=ErrorCode.UNKNOWN_TYPE,
        )
    return ProtocolError(f"invalid {kind} {noun}: {clip(str(exc))}", code=ErrorCode.INVALID_FIELD)


def check_session_id(session_id: str, max_chars: int) -> None:
    """Raise `ProtocolError` unless `session_id` is safe to put in a subject."""
    if len(session_id) > max_chars:
        raise ProtocolError(
            f"session id of {len(session_id)} characters is longer than "
            f"STT_MAX_SESSION_ID_CHARS={max_chars}",
            code=ErrorCode.INVALID_SESSION_ID,
        )
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise ProtocolError(
            f"session id {shown(session_id)} has characters other than printable ASCII, or the "
            "wildcards '*' or '>'",
            code=ErrorCode.INVALID_SESSION_ID,
        )


def chunk_pcm_bytes(chunk: Chunk | Playback) -> bytes:
    """The message's little-endian PCM16 bytes, from ``audio`` or ``audio_b64``."""
    if chunk.audio is not None:
        return chunk.audio
    if chunk.audio_b64 is None:
        raise ProtocolError(
            "chunk has neither 'audio_b64' nor 'audio'", code=ErrorCode.MISSING_AUDIO
        )
    try:
        return binascii.a2b_base64(chunk.audio_b64, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(
            f"audio_b64 is not valid base64: {exc}", code=ErrorCode.INVALID_AUDIO
        ) from exc


# ---------------------------------------------------------------- output


class Word(msgspec.Struct, frozen=True):
    """One word of a final (`word_timestamps`): its text as Whisper wrote it (leading space
    and attached punctuation included), when it was said in the session's audio, and the
    decoder's mean token probability (None when the backend does not report one)."""

    word: str
    start_s: float
    end_s: float
    probability: float | None = None


class Transcription(msgspec.Struct, frozen=True):
    """A partial or final result. The first nine fields are the seed's, unchanged."""

    session_id: str
    transcript: str
    sequence: int
    is_partial: bool
    is_final: bool
    timestamp: float
    speaker_id: SpeakerId
    has_voice_activity: bool
    state: State
    # Additive fields.
    type: str = "transcript"
    utterance_id: int = 0
    audio_start_s: float = 0.0
    audio_end_s: float = 0.0
    language: str | None = None
    inference_ms: float = 0.0
    # How many leading characters of `transcript` will not change in later partials or,
    # normally, in the final (LocalAgreement); a final's is its whole length.
    stable_chars: int = 0
    end_reason: EndReason | None = None  # finals only
    # Finals only: speech heard while the assistant talked that held only backchannels
    # ("yeah", "mm-hmm"): transcribed and published, but it did not take the turn.
    backchannel: bool = False
    # Durable mode only (absent otherwise): JetStream stream sequences of the first and last
    # audio messages this result was made from, so consumers can drop a replay's duplicates.
    source_seq_first: int | msgspec.UnsetType = msgspec.UNSET
    source_seq_last: int | msgspec.UnsetType = msgspec.UNSET
    # Finals of sessions that asked for `word_timestamps` only (absent otherwise).
    words: list[Word] | msgspec.UnsetType = msgspec.UNSET


class Interrupt(msgspec.Struct, frozen=True):
    session_id: str
    timestamp: float
    speaker_id: SpeakerId
    type: str = "interrupt"
    # Additive: the utterance whose speech triggered the barge-in, and in word mode the
    # words that confirmed it (None in voice-activity mode).
    utterance_id: int = 0
    transcript: str | None = None


class Error(msgspec.Struct, frozen=True):
    session_id: str
    code: str
    message: str
    timestamp: float
    speaker_id: SpeakerId = None
    # Additive: set when a transcription failed, so the client knows which speech is missing.
    utterance_id: int | None = None
    type: str = "error"


class SessionClosed(msgspec.Struct, frozen=True):
    session_id: str
    reason: CloseReason
    timestamp: float
    speaker_id: SpeakerId
    utterances: int
    type: str = "session_closed"
    # The last chunk `seq` the session took (None: no numbered chunk). A publisher whose
    # later chunks reached the worker after it ended the session on its own (`idle`,
    # `max_duration`) learns from it that they opened the session again.
    last_seq: int | None = None


def went_on(closed: SessionClosed, last_sent_seq: int | None) -> bool:
    """Whether a publisher whose last chunk had `last_sent_seq` still holds an open session
    after `closed`: the worker ended the session on its own (idle, age) while later chunks
    were on their way, and those opened the next one as it was (format, options). After a
    drain (`shutdown`) they went to another worker, and after `end` there is no next one."""
    last = closed.last_seq
    on_its_own = closed.reason in ("idle", "max_duration")
    return on_its_own and last is not None and last_sent_seq is not None and last_sent_seq > last


class EagerEndOfTurn(msgspec.Struct, frozen=True):
    """Opt-in (`turn_events`): the user paused and, if the pause goes on to the endpoint,
    `text` is the final of `utterance_id` (Deepgram Flux's EagerEndOfTurn). An assistant may
    start its answer on it; a `turn_resumed` cancels it, the final confirms it."""

    session_id: str
    utterance_id: int
    sequence: int  # the session's numbering, shared with its transcripts
    text: str
    timestamp: float
    speaker_id: SpeakerId = None
    audio_start_s: float = 0.0
    audio_end_s: float = 0.0  # the speech the text was decoded from ends here
    language: str | None = None
    inference_ms: float = 0.0
    type: str = "eager_end_of_turn"


class TurnResumed(msgspec.Struct, frozen=True):
    """Opt-in (`turn_events`): speech came back in the utterance of the last
    `eager_end_of_turn`, whose text is no longer its final (Flux's TurnResumed)."""

    session_id: str
    utterance_id: int
    sequence: int
    timestamp: float
    speaker_id: SpeakerId = None
    audio_start_s: float = 0.0
    audio_end_s: float = 0.0  # the end of the voiced frame that resumed the turn
    type: str = "turn_resumed"


TurnEvent = EagerEndOfTurn | TurnResumed
ServerMessage = Transcription | Interrupt | Error | SessionClosed | EagerEndOfTurn | TurnResumed

_encoder = msgspec.msgpack.Encoder()


def encode_server_message(message: ServerMessage) -> bytes:
    return _encoder.encode(message)


class _Kind(msgspec.Struct):
    """Only a server message's ``type``: which typed decoder reads the rest."""

    type: str | None = None


_kind_decoder = msgspec.msgpack.Decoder(_Kind)
# The structs are not tagged: the seed's transcription results have no `type` on the wire,
# so a map without one (or with a nil one) is a transcription, as it always was.
_server_decoders: dict[str | None, msgspec.msgpack.Decoder[Any]] = {
    None: msgspec.msgpack.Decoder(Transcription),
    "transcript": msgspec.msgpack.Decoder(Transcription),
    "interrupt": msgspec.msgpack.Decoder(Interrupt),
    "error": msgspec.msgpack.Decoder(Error),
    "session_closed": msgspec.msgpack.Decoder(SessionClosed),
    "eager_end_of_turn": msgspec.msgpack.Decoder(EagerEndOfTurn),
    "turn_resumed": msgspec.msgpack.Decoder(TurnResumed),
}
_SERVER_TYPES = sorted(kind for kind in _server_decoders if kind is not None)


def decode_server_message(data: bytes) -> ServerMessage:
    """Decode one output message or raise `ProtocolError` with a stable code."""
    try:
        kind = _kind_decoder.decode(data).type
        decoder = _server_decoders.get(kind)
        if decoder is None:
            raise ProtocolError(
                f"unknown message type {kind!r}; expected one of {_SERVER_TYPES}",
                code=ErrorCode.UNKNOWN_TYPE,
            )
        message: ServerMessage = decoder.decode(data)
        return message
    except msgspec.ValidationError as exc:
        try:
            raw = _any_decoder.decode(data)
        except _MALFORMED as malformed:
            raise _malformed(malformed) from exc
        except RecursionError as deep:
            raise _too_deep() from deep
        if isinstance(raw, dict) and raw.get("type") is None:
            raise ProtocolError(
                f"invalid transcript message: {clip(str(exc))}", code=ErrorCode.INVALID_FIELD
            ) from exc
        raise classify_invalid(raw, exc, types=_SERVER_TYPES) from exc
    except _MALFORMED as exc:
        raise _malformed(exc) from exc
    except RecursionError as exc:
        raise _too_deep() from exc


# `Start`'s additive per-session options: sent only when set, so a `start` from our publisher
# is the seed's message unless the session asks for more.
START_OPTIONS = (
    "prompt",
    "task",
    "partials",
    "word_timestamps",
    "endpoint_mode",
    "endpoint_silence_ms",
    "endpoint_min_silence_ms",
    "endpoint_max_silence_ms",
    "turn_max_ms",
    "barge_in_mode",
    "interrupt_min_speech_ms",
    "barge_in_probe_ms",
    "turn_events",
)


def encode_client_message(message: ClientMessage) -> bytes:
    """Used by our own publisher (`stt-streaming stream`) and tests."""
    if isinstance(message, Start):
        fields = msgspec.structs.asdict(message)
        unset = [name for name in START_OPTIONS if fields[name] is None]
        return _encoder.encode(
            {"type": "start", **{k: v for k, v in fields.items() if k not in unset}}
        )
    return _encoder.encode(message)
