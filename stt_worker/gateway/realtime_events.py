"""OpenAI Realtime transcription events: client events parsed into commands, the worker's
results turned into server events.

Pure (no I/O). Shapes follow the ``openai`` SDK's ``types/realtime`` (3.x): the GA
``session.update`` with ``session.type = "transcription"`` and ``audio.input``, and the beta
``transcription_session.update`` with ``input_audio_format`` and
``input_audio_transcription``; each is answered in its own shape.

Results: the first result of an utterance opens an item (``input_audio_buffer.speech_started``);
a partial that extends the text already sent is sent as its new suffix
(``conversation.item.input_audio_transcription.delta``); a partial that revises earlier words
sends nothing (deltas only ever append) until a later partial extends what was sent; the final
closes the item (``speech_stopped``, ``committed``, then ``...completed`` with the whole,
authoritative transcript).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from stt_worker.core.audio import check_format
from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.options import ENDPOINT_MS, MAX_PROMPT_BYTES
from stt_worker.core.protocol import LANGUAGE_PATTERN, Transcription

# OpenAI's only PCM rate, and so what a session assumes until told otherwise.
REALTIME_SAMPLE_RATE = 24_000
_LANGUAGE = re.compile(LANGUAGE_PATTERN)
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_NOT_TRANSCRIPTION = (
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a transcription session was configured with; echoed in ``session.*`` events."""

    sample_rate: int = REALTIME_SAMPLE_RATE
    language: str | None = None
    model: str = "stt-streaming"
    prompt: str | None = None
    # Echoed as given; `start_options` maps it onto the worker's end-of-turn options.
    turn_detection: Any = field(default_factory=lambda: {"type": "server_vad"})
    beta: bool = False  # answered as transcription_session.updated


@dataclass(frozen=True, slots=True)
class Append:
    audio: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    pass


@dataclass(frozen=True, slots=True)
class Clear:
    pass


@dataclass(frozen=True, slots=True)
class Update:
    config: SessionConfig


ClientEvent = Append | Commit | Clear | Update


def check_intent(intent: str | None) -> None:
    """The handshake's ``?intent=``: only transcription sessions are served."""
    if intent != "transcription":
        raise ProtocolError(
            f"intent {str(intent)[:40]!r}: this gateway serves only ?intent=transcription",
            code=ErrorCode.INVALID_FIELD,
        )


def parse_client_event(text: str, config: SessionConfig) -> ClientEvent:
    """One text frame; `ProtocolError` with the gateway's codes when it cannot be used."""
    try:
        event = _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"event is not JSON: {exc}", code=ErrorCode.MALFORMED_JSON) from exc
    if not isinstance(event, dict):
        raise ProtocolError("event is not a JSON object", code=ErrorCode.NOT_A_MAP)
    kind = event.get("type")
    if kind is None:
        raise ProtocolError("event has no 'type'", code=ErrorCode.MISSING_TYPE)
    match kind:
        case "input_audio_buffer.append":
            return Append(_audio(event.get("audio")))
        case "input_audio_buffer.commit":
            return Commit()
        case "input_audio_buffer.clear":
            return Clear()
        case "session.update" | "transcription_session.update":
            session = _object(event.get("session", {}), "session")
            if kind == "session.update":
                return Update(_ga_update(session, config))
            return Update(_beta_update(session, config))
    what = "is not part of a transcription session" if kind in _NOT_TRANSCRIPTION else "unknown"
    raise ProtocolError(f"event type {str(kind)[:60]!r}: {what}", code=ErrorCode.UNKNOWN_TYPE)


def _audio(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("'audio' must be a base64 string", code=ErrorCode.INVALID_FIELD)
    try:
        audio = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"'audio' is not base64: {exc}", code=ErrorCode.INVALID_AUDIO) from exc
    if len(audio) % 2:
        raise ProtocolError(
            f"audio of {len(audio)} bytes: PCM16 needs an even byte count",
            code=ErrorCode.INVALID_AUDIO,
        )
    return audio


def _ga_update(session: dict[str, Any], config: SessionConfig) -> SessionConfig:
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise ProtocolError(
            f"session type {str(kind)[:40]!r}: this endpoint only transcribes "
            "(session.type 'transcription')",
            code=ErrorCode.INVALID_FIELD,
        )
    audio_input = _object(_object(session.get("audio", {}), "audio").get("input", {}), "input")
    config = replace(config, beta=False)
    if "format" in audio_input:
        config = replace(config, sample_rate=_ga_format(_object(audio_input["format"], "format")))
    if "transcription" in audio_input:
        config = _transcription(audio_input["transcription"], config)
    if "turn_detection" in audio_input:
        config = replace(config, turn_detection=_turn_detection(audio_input["turn_detection"]))
    return config


def _beta_update(session: dict[str, Any], config: SessionConfig) -> SessionConfig:
    config = replace(config, beta=True)
    audio_format = session.get("input_audio_format", "pcm16")
    if audio_format != "pcm16":
        raise _unsupported(audio_format)
    if "input_audio_transcription" in session:
        config = _transcription(session["input_audio_transcription"], config)
    if "turn_detection" in session:
        config = replace(config, turn_detection=_turn_detection(session["turn_detection"]))
    return config


def _ga_format(audio_format: dict[str, Any]) -> int:
    if audio_format.get("type", "audio/pcm") != "audio/pcm":
        raise _unsupported(audio_format.get("type"))
    rate = audio_format.get("rate", REALTIME_SAMPLE_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ProtocolError("'rate' must be an integer", code=ErrorCode.INVALID_FIELD)
    check_format(rate, 1)
    return rate


def _transcription(value: Any, config: SessionConfig) -> SessionConfig:
    if value is None:
        return config  # "transcription off" does not apply to a transcription endpoint
    settings = _object(value, "transcription")
    language = settings.get("language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language)):
        raise ProtocolError(
            f"language {str(language)[:40]!r} is not a language code",
            code=ErrorCode.INVALID_FIELD,
        )
    model = settings.get("model", config.model)
    prompt = settings.get("prompt", config.prompt)
    if prompt is not None and (
        not isinstance(prompt, str) or len(prompt.encode("utf-8", "replace")) > MAX_PROMPT_BYTES
    ):
        raise ProtocolError(
            f"'prompt' must be a string of at most {MAX_PROMPT_BYTES} bytes of UTF-8 (what "
            "Whisper conditions on)",
            code=ErrorCode.INVALID_FIELD,
        )
    return replace(config, language=language, model=str(model)[:80], prompt=prompt)


def _turn_detection(value: Any) -> Any:
    """``turn_detection`` checked for what `start_options` maps: null, ``server_vad`` (its
    ``silence_duration_ms`` within the worker's bounds) or ``semantic_vad``."""
    if value is None:
        return None
    kind = _object(value, "turn_detection").get("type")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(
            f"turn_detection type {str(kind)[:40]!r}: expected 'server_vad' or 'semantic_vad'",
            code=ErrorCode.INVALID_FIELD,
        )
    silence = value.get("silence_duration_ms")
    least, most = ENDPOINT_MS
    if kind == "server_vad" and silence is not None and not _whole_in(silence, least, most):
        raise ProtocolError(
            f"'silence_duration_ms' must be a whole number of ms from {least} to {most}",
            code=ErrorCode.INVALID_FIELD,
        )
    return value


def _whole_in(value: Any, least: int, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def start_options(config: SessionConfig) -> dict[str, Any]:
    """The worker `start` options a session's configuration asks for (docs/gateway.md):
    the transcription prompt, and its turn detection as the end-of-turn rule. ``null`` (the
    client commits each turn) is the longest pause the worker allows, so that only a commit
    or a very long silence ends an utterance. Every option is always given (None: the
    worker's setting), as each update's `start` is laid over the previous one's."""
    turn = config.turn_detection
    mode, silence_ms = None, None
    if turn is None:
        mode, silence_ms = "fixed", ENDPOINT_MS[1]
    elif turn.get("type") == "semantic_vad":
        mode = "turn"
    elif turn.get("silence_duration_ms") is not None:
        mode, silence_ms = "fixed", turn["silence_duration_ms"]
    return {"prompt": config.prompt, "endpoint_mode": mode, "endpoint_silence_ms": silence_ms}


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be a JSON object", code=ErrorCode.INVALID_FIELD)
    return value


def _unsupported(audio_format: Any) -> ProtocolError:
    return ProtocolError(
        f"audio format {str(audio_format)[:40]!r}: only PCM16 ('audio/pcm', 'pcm16') is taken",
        code=ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
    )


# ---------------------------------------------------------------- server events


def event(kind: str, **fields: Any) -> str:
    """A server event's JSON, with a fresh ``event_id``."""
    return _encoder.encode({"type": kind, "event_id": new_id("event"), **fields}).decode()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def session_event(kind: str, session_id: str, config: SessionConfig) -> str:
    """``session.created``/``updated`` (or the beta ``transcription_session.*``)."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
    if config.beta:
        session: dict[str, Any] = {
            "id": session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": transcription,
            "turn_detection": config.turn_detection,
        }
        return event(f"transcription_session.{kind}", session=session)
    session = {
        "type": "transcription",
        "id": session_id,
        "object": "realtime.transcription_session",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": config.sample_rate},
                "transcription": transcription,
                "turn_detection": config.turn_detection,
            }
        },
    }
    return event(f"session.{kind}", session=session)


def error_event(code: str, message: str, *, server: bool) -> str:
    kind = "server_error" if server else "invalid_request_error"
    error = {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
    return event("error", error=error)


@dataclass(slots=True)
class _Item:
    item_id: str
    sent: str = ""


class Items:
    """The open item of each utterance, keyed by (the client's session name, utterance id):
    a commit or clear opens a new worker session, whose utterance ids start again."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], _Item] = {}
        self._previous: str | None = None

    def events(self, result: Transcription, offset_ms: float) -> list[str]:
        """The server events for one worker result; `offset_ms` is where the worker session's
        audio starts in the connection's."""
        key = (result.session_id, result.utterance_id)
        events = []
        item = self._open.get(key)
        if item is None:
            item = self._open[key] = _Item(new_id("item"))
            start_ms = round(offset_ms + result.audio_start_s * 1000)
            events.append(
                event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=start_ms,
                    item_id=item.item_id,
                )
            )
        if not result.is_final:
            text = result.transcript
            if text.startswith(item.sent) and len(text) > len(item.sent):
                delta, item.sent = text[len(item.sent) :], text
                events.append(_delta(item.item_id, delta))
            return events
        del self._open[key]
        end_ms = round(offset_ms + result.audio_end_s * 1000)
        events += [
            event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item.item_id),
            event(
                "input_audio_buffer.committed",
                item_id=item.item_id,
                previous_item_id=self._previous,
            ),
            event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item.item_id,
                content_index=0,
                transcript=result.transcript,
                usage={
                    "type": "duration",
                    "seconds": round(result.audio_end_s - result.audio_start_s, 3),
                },
            ),
        ]
        self._previous = item.item_id
        return events


def _delta(item_id: str, delta: str) -> str:
    return event(
        "conversation.item.input_audio_transcription.delta",
        item_id=item_id,
        content_index=0,
        delta=delta,
    )
