"""Every error code the project sends, once, and the worker's exception tree.

`ErrorCode` is the registry: each member is a code's string (stable: clients switch on it),
who emits it (`Emitter`) and what it means in one line. The worker publishes the codes in
``error`` messages, the gateway in ``error`` frames (it also forwards the worker's), and the
whisper-server in OpenAI-shaped error bodies. ``docs/errors.md`` is generated from it
(``python -m stt_worker.tools.error_docs``).

The exceptions carry a code (their class's default unless given)::

    SttError                 internal_error
    ├── ProtocolError        invalid_message: a message we cannot accept (bad msgpack, ...)
    ├── EngineError          engine_error: the speech engine failed on an utterance
    │   ├── ModelNotFoundError   model_not_found: the model is not available locally
    │   └── ModelIntegrityError  model_checksum_mismatch: a weight file is not the pinned one
    └── OverloadedError      overloaded: a bound was reached (sessions, queued inferences)

The runtime adds ``BusError`` (NATS failed; ``ConnectError`` when connecting), code
``nats_unavailable``.
"""

from __future__ import annotations

import enum


class Emitter(enum.Flag):
    """Who sends a code to its clients."""

    WORKER = enum.auto()
    GATEWAY = enum.auto()
    WHISPER_SERVER = enum.auto()

    @property
    def names(self) -> list[str]:
        """``["worker", "gateway"]``: the emitters in this set, as the docs name them."""
        return [str(each.name).lower().replace("_", "-") for each in type(self) if each in self]


_W = Emitter.WORKER
_G = Emitter.GATEWAY
_S = Emitter.WHISPER_SERVER


@enum.unique
class ErrorCode(enum.StrEnum):
    """The stable codes: ``NAME = code, who emits it, what it means``."""

    emitters: Emitter
    meaning: str

    def __new__(cls, value: str, emitters: Emitter, meaning: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.emitters = emitters
        member.meaning = meaning
        return member

    # Messages that cannot be read (NATS msgpack, gateway JSON controls).
    MALFORMED_MSGPACK = "malformed_msgpack", _W, "The payload is not valid msgpack."
    MALFORMED_JSON = "malformed_json", _G, "A text frame is neither JSON nor a control word."
    NOT_A_MAP = "not_a_map", _W | _G, "The message is not a msgpack map (a JSON object)."
    MISSING_TYPE = "missing_type", _W | _G, "The message has no `type` field."
    UNKNOWN_TYPE = "unknown_type", _W | _G, "The `type` (or control word) is not one we know."
    INVALID_FIELD = (
        "invalid_field",
        _W | _G,
        "A field (or a gateway query parameter) has the wrong type or an unaccepted value.",
    )
    INVALID_MESSAGE = (
        "invalid_message",
        _W | _G,
        "A message not accepted, with no more specific code (`ProtocolError`'s default).",
    )
    INVALID_SESSION_ID = (
        "invalid_session_id",
        _W | _G,
        "The session id is too long, unfit for a subject, holds '~' or is in use (gateway).",
    )

    # Audio.
    INVALID_AUDIO = (
        "invalid_audio",
        _W | _G | _S,
        "Audio that cannot be used: bad base64, an odd PCM16 byte count, an undecodable file.",
    )
    MISSING_AUDIO = (
        "missing_audio",
        _W,
        "A `chunk` or `playback` has neither `audio` nor `audio_b64`.",
    )
    UNSUPPORTED_AUDIO_FORMAT = (
        "unsupported_audio_format",
        _W | _G,
        "The sample rate is outside 8-192 kHz or the channel count outside 1-8.",
    )
    CHUNK_TOO_LARGE = (
        "chunk_too_large",
        _W | _G,
        "An audio message or frame is larger than `STT_MAX_CHUNK_BYTES`.",
    )
    CHUNK_OUT_OF_ORDER = (
        "chunk_out_of_order",
        _W,
        "A chunk's `seq` repeats or comes late; that chunk is not used.",
    )
    AUDIO_DROPPED = (
        "audio_dropped",
        _W,
        "The worker's NATS client dropped a message of the session (slow consumer).",
    )
    ECHO_CANCELLATION_UNAVAILABLE = (
        "echo_cancellation_unavailable",
        _W,
        "A `playback` came but echo cancellation is not installed; it is ignored.",
    )

    # Sessions and bounds.
    UNKNOWN_SESSION = "unknown_session", _W, "An `end` for a session the worker does not have."
    TOO_MANY_SESSIONS = (
        "too_many_sessions",
        _W,
        "`STT_MAX_SESSIONS` sessions are open; this one is refused.",
    )
    OVERLOADED = (
        "overloaded",
        _W | _G | _S,
        "A bound was reached: queued finals, a connection's pending sessions, the server's queue.",
    )
    RATE_LIMITED = (
        "rate_limited",
        _W,
        "The session sends faster than its share (audio past `STT_MAX_AUDIO_SPEED`, control "
        "messages, a full inbox: durable mode first waits for room); the refused messages are "
        "dropped, said at most once a second. A session that keeps sending audio past "
        "`STT_FLOOD_FACTOR` times its budget for 3 s gets none taken until it slows down.",
    )
    SHUTTING_DOWN = (
        "shutting_down",
        _W,
        "Reserved for a worker that refuses work while it drains; not sent at present.",
    )
    SESSION_ENDED = "session_ended", _G, "Frames after `end` are not used (said once)."
    TOO_MANY_CONNECTIONS = (
        "too_many_connections",
        _G,
        "`STT_GATEWAY_MAX_CONNECTIONS` connections are open, or "
        "`STT_GATEWAY_MAX_CONNECTIONS_PER_CLIENT` from this address; closed with 1013.",
    )
    IDLE_TIMEOUT = (
        "idle_timeout",
        _G,
        "No audio within `STT_GATEWAY_FIRST_AUDIO_TIMEOUT_S` of connecting; closed with 1008.",
    )
    CLIENT_TOO_SLOW = (
        "client_too_slow",
        _G,
        "Reserved: a client too slow to take its finals is closed with 1013, not told.",
    )

    # Access and the bus.
    FORBIDDEN_ORIGIN = (
        "forbidden_origin",
        _G,
        "The browser's Origin is neither the gateway's nor in `STT_GATEWAY_ALLOWED_ORIGINS`.",
    )
    FORBIDDEN_HOST = (
        "forbidden_host",
        _G,
        "The `Host` is not one of the gateway's names (`STT_GATEWAY_ALLOWED_HOSTS`): DNS "
        "rebinding.",
    )
    UNAUTHORIZED = "unauthorized", _G, "The token is missing or wrong (`STT_GATEWAY_TOKEN`)."
    NATS_UNAVAILABLE = (
        "nats_unavailable",
        _G,
        "NATS is unreachable, refused the credentials, or was lost (a worker or tool exits).",
    )

    COMMIT_EMPTY = (
        "input_audio_buffer_commit_empty",
        _G,
        "OpenAI Realtime: `input_audio_buffer.commit` found no speech left to transcribe.",
    )

    # Speech engines.
    ENGINE_ERROR = "engine_error", _W | _S, "The speech engine failed on an utterance."
    MODEL_NOT_FOUND = (
        "model_not_found",
        _W | _S,
        "The configured Whisper model is not available locally (the process exits at startup).",
    )
    MODEL_CHECKSUM_MISMATCH = (
        "model_checksum_mismatch",
        _W | _S,
        "A weight file's size or SHA-256 is not the pinned one (the process exits at startup).",
    )
    BACKEND_UNAVAILABLE = (
        "backend_unavailable",
        _W,
        "HTTP engine: the backend is unreachable, timed out, or stayed overloaded after retries.",
    )
    BACKEND_REJECTED = (
        "backend_rejected",
        _W,
        "HTTP engine: the backend answered another error status (not retried).",
    )
    BACKEND_BAD_RESPONSE = (
        "backend_bad_response",
        _W,
        "HTTP engine: the backend answered 2xx without a usable transcript.",
    )

    # The whisper-server's requests.
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        _S,
        "The request body is not `multipart/form-data` (415).",
    )
    UNSUPPORTED_RESPONSE_FORMAT = (
        "unsupported_response_format",
        _S,
        "`response_format` is not `json`, `verbose_json`, `text`, `srt` or `vtt`.",
    )
    UNSUPPORTED_TIMESTAMP_GRANULARITY = (
        "unsupported_timestamp_granularity",
        _S,
        "`timestamp_granularities[]` holds other than `word` and `segment`, or comes without "
        "`response_format=verbose_json`.",
    )
    UNSUPPORTED_LANGUAGE = (
        "unsupported_language",
        _S,
        "`language` is not a Whisper language code.",
    )
    NO_FILE = "no_file", _S, "The form has no `file` part with the audio."
    EMPTY_AUDIO = "empty_audio", _S, "The uploaded file is empty or holds no audio samples."
    FILE_TOO_LARGE = (
        "file_too_large",
        _S,
        "The request body exceeds `WHISPER_SERVER_MAX_UPLOAD_BYTES` (413).",
    )
    AUDIO_TOO_LONG = (
        "audio_too_long",
        _S,
        "The audio is longer than `WHISPER_SERVER_MAX_AUDIO_S` (413).",
    )
    INVALID_API_KEY = (
        "invalid_api_key",
        _S,
        "`WHISPER_API_KEY` is set and the request has no or another bearer key (401).",
    )
    REQUEST_TIMEOUT = (
        "request_timeout",
        _S,
        "The request body did not arrive within `WHISPER_SERVER_BODY_TIMEOUT_S` (408).",
    )

    INTERNAL_ERROR = (
        "internal_error",
        _W | _S,
        "An unexpected failure (a bug); the message says what.",
    )


class SttError(Exception):
    """Base of every error the worker reports to a client."""

    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: str | None = None, messages: int = 1) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        # The client messages it answers: a `rate_limited` notice sums many, and when its
        # reply is held back the next one must still count them all.
        self.messages = messages

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(SttError):
    code = ErrorCode.INVALID_MESSAGE


class EngineError(SttError):
    code = ErrorCode.ENGINE_ERROR


class ModelNotFoundError(EngineError):
    code = ErrorCode.MODEL_NOT_FOUND


class ModelIntegrityError(EngineError):
    code = ErrorCode.MODEL_CHECKSUM_MISMATCH


class OverloadedError(SttError):
    code = ErrorCode.OVERLOADED
