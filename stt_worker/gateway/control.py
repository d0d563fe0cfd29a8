"""Control frames: what a WebSocket client's non-audio frames mean, as typed controls.

Pure (no I/O): `parse_text` and `parse_binary` turn one frame into a `Control` or raise
`ProtocolError` with a stable code. Three vocabularies are accepted on every connection:

- ours (native JSON): ``{"type": "start", ...}``, ``{"type": "state_change", "state": ...}``,
  ``{"type": "end"}``, the seed's client messages less ``chunk`` (audio is binary frames);
- Parakeet-TDT's server: the text or binary frames ``__CTRL__:EOS`` (flush the final) and
  ``__CTRL__:RESET`` (also bare ``RESET``);
- the ONNX server's JSON: ``{"type": "final"}`` (transcribe now) and ``{"type": "reset"}``.

Audio is any other binary frame: PCM16, so it must hold whole samples.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from stt_worker.core import protocol
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode, StateChange, classify_invalid

Dialect = Literal["native", "parakeet", "onnx"]
DIALECTS: tuple[Dialect, ...] = ("native", "parakeet", "onnx")


class Start(protocol.Start, frozen=True):
    """The seed's ``start``; without ``sample_rate`` the connection's (query or 16 kHz) holds."""

    sample_rate: int | None = None  # type: ignore[assignment]


class End(msgspec.Struct, tag="end", tag_field="type", frozen=True):
    """The seed's ``end``: finish the session; the gateway closes the socket (1000) after the
    session's last result."""


class Flush(msgspec.Struct, tag="final", tag_field="type", frozen=True):
    """``{"type": "final"}`` or ``__CTRL__:EOS``: finalise what was said so far; the socket
    stays open and later audio starts a new worker session."""


class Reset(msgspec.Struct, tag="reset", tag_field="type", frozen=True):
    """``{"type": "reset"}`` or ``RESET``: start over. The worker never drops accepted audio,
    so the pending speech is finalised (and its final sent), not discarded."""


Control = Start | StateChange | End | Flush | Reset

_decoder = msgspec.json.Decoder(Control)
_any_decoder = msgspec.json.Decoder()
_TYPES = ("start", "state_change", "end", "final", "reset")
_CTRL_PREFIX = "__CTRL__:"
_TEXT_FORMS: dict[str, Control] = {
    f"{_CTRL_PREFIX}EOS": Flush(),
    f"{_CTRL_PREFIX}RESET": Reset(),
    "RESET": Reset(),
}
# Parakeet-TDT clients send their control words as binary frames too.
CTRL_PREFIX_BYTES = _CTRL_PREFIX.encode()


def parse_text(text: str) -> Control:
    """One text frame: a Parakeet control word, else a JSON control message."""
    stripped = text.strip()
    if stripped in _TEXT_FORMS:
        return _TEXT_FORMS[stripped]
    if stripped.startswith(_CTRL_PREFIX):
        raise ProtocolError(
            f"unknown control frame {stripped[:40]!r}; expected {_CTRL_PREFIX}EOS or "
            f"{_CTRL_PREFIX}RESET",
            code=ErrorCode.UNKNOWN_TYPE,
        )
    try:
        return _decoder.decode(stripped)
    except msgspec.ValidationError as exc:
        # The typed decoder may fail on the shape before it sees that the JSON is broken.
        try:
            raw = _any_decoder.decode(stripped)
        except msgspec.DecodeError as malformed:
            raise _malformed(malformed) from exc
        raise _classify(raw, exc) from exc
    except msgspec.DecodeError as exc:
        raise _malformed(exc) from exc


def _malformed(exc: msgspec.DecodeError) -> ProtocolError:
    return ProtocolError(
        f"text frame is neither JSON nor a control word: {exc}",
        code=ErrorCode.MALFORMED_JSON,
    )


def parse_binary(data: bytes) -> Control | bytes:
    """One binary frame: a Parakeet control word, else PCM16 audio (whole samples only)."""
    if data.startswith(CTRL_PREFIX_BYTES):
        try:
            return parse_text(data.decode())
        except UnicodeDecodeError as exc:
            raise ProtocolError("control frame is not UTF-8", code=ErrorCode.UNKNOWN_TYPE) from exc
    if len(data) % 2:
        raise ProtocolError(
            f"audio frame of {len(data)} bytes: PCM16 needs an even byte count",
            code=ErrorCode.INVALID_AUDIO,
        )
    return data


def parse_dialect(value: str | None) -> Dialect | None:
    """The ``?protocol=`` query value; None when absent (inferred from the first control)."""
    if value is None or value == "":
        return None
    for dialect in DIALECTS:
        if value == dialect:
            return dialect
    raise ProtocolError(
        f"unknown protocol {value!r}; expected one of {', '.join(DIALECTS)}",
        code=ErrorCode.INVALID_FIELD,
    )


def dialect_of(text: str, control: Control) -> Dialect:
    """Which client sent `control` (parsed from `text`), for connections that did not say."""
    if text.strip().startswith(_CTRL_PREFIX) or text.strip() == "RESET":
        return "parakeet"
    return "onnx" if isinstance(control, Flush | Reset) else "native"


def _classify(raw: Any, exc: msgspec.ValidationError) -> ProtocolError:
    return classify_invalid(
        raw,
        exc,
        types=list(_TYPES),
        noun="control",
        container="a JSON object",
        hint=" (audio goes in binary frames)",
    )
