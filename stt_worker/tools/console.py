"""One-line, human-readable rendering of the worker's output messages, for ``tail`` and ``demo``.

`format_message` renders a typed message (`Transcription`, `Interrupt`, `Error`,
`SessionClosed`, the turn events `EagerEndOfTurn` and `TurnResumed`). `format_delivery`
renders whatever came off the bus: a message, or a compact generic line for a payload that
is none (garbage, or a newer worker's new type), built from `unreadable_fields`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, assert_never

import msgspec

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    Interrupt,
    ServerMessage,
    SessionClosed,
    SpeakerId,
    Transcription,
    TurnEvent,
    TurnResumed,
)
from stt_worker.runtime.bus import Delivery

_RESET = "\033[0m"
_DIM = "\033[2m"
_BOLD_GREEN = "\033[1;32m"
_YELLOW = "\033[33m"
_RED = "\033[31m"
_CYAN = "\033[36m"
_MAX_VALUE_CHARS = 60
Painter = Callable[[str, str], str]


def format_message(
    message: ServerMessage, *, latency_s: float | None = None, color: bool | None = None
) -> str:
    """Render one output message; `latency_s` (finals) is shown as "after last audio".

    `color` defaults to whether stdout is a terminal, so pipes and files get plain text.
    """
    paint = _painter(color)
    session = paint(f"[{message.session_id}]", _DIM)
    match message:
        case Transcription():
            return f"{session} {_transcription(message, latency_s, paint)}"
        case Interrupt():
            details = _utterance(message.utterance_id) + _speaker(message.speaker_id)
            suffix = f"  {paint('(' + ', '.join(details) + ')', _DIM)}" if details else ""
            return f"{session} {paint('⚡ interrupt', _YELLOW)}{suffix}"
        case Error():
            return f"{session} {paint(f'✖ {message.code}: {message.message}', _RED)}"
        case SessionClosed():
            details = f"({message.reason}, {message.utterances} utterances)"
            return f"{session} {paint('■ session closed', _CYAN)}  {paint(details, _DIM)}"
        case EagerEndOfTurn() | TurnResumed():
            return f"{session} {_turn_event(message, paint)}"
    assert_never(message)


def _transcription(message: Transcription, latency_s: float | None, paint: Painter) -> str:
    details = [f"seq {message.sequence}", *_utterance(message.utterance_id)]
    details += _speaker(message.speaker_id)
    if message.is_final and latency_s is not None:
        details.append(f"{latency_s:.2f} s after last audio")
    text = message.transcript.strip() or "(no speech)"
    line = paint(f"✔ {text}", _BOLD_GREEN) if message.is_final else paint(f"… {text}", _DIM)
    return f"{line}  {paint('(' + ', '.join(details) + ')', _DIM)}"


def _turn_event(message: TurnEvent, paint: Painter) -> str:
    details = [f"seq {message.sequence}", *_utterance(message.utterance_id)]
    details += _speaker(message.speaker_id)
    if isinstance(message, EagerEndOfTurn):
        line = paint(f"⏵ eager end of turn: {message.text.strip()}", _CYAN)
    else:
        line = paint("↺ turn resumed", _CYAN)
    return f"{line}  {paint('(' + ', '.join(details) + ')', _DIM)}"


def format_delivery(
    delivery: Delivery, *, latency_s: float | None = None, color: bool | None = None
) -> str:
    """`format_message`, or a generic ``? kind key=value ...`` line for an unreadable payload."""
    if not isinstance(delivery.message, ProtocolError):
        return format_message(delivery.message, latency_s=latency_s, color=color)
    fields = unreadable_fields(delivery)
    session = _painter(color)(f"[{fields.pop('session_id')}]", _DIM)
    kind = fields.pop("type", None)
    shown = " ".join(f"{key}={_short(value)}" for key, value in fields.items())
    return f"{session} ? {kind or 'message'} {shown}".rstrip()


def unreadable_fields(delivery: Delivery) -> dict[str, Any]:
    """What a payload that is no output message holds, for display only: its map, else its
    size (``undecodable``) or value (``non_map``); with the subject's last token as the
    session id when it names none."""
    try:
        raw = msgspec.msgpack.decode(delivery.payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raw = {"type": "undecodable", "size_bytes": len(delivery.payload)}
    if not isinstance(raw, dict):
        raw = {"type": "non_map", "value": raw}
    raw.setdefault("session_id", delivery.subject.rsplit(".", 1)[-1])
    return raw


def _utterance(utterance_id: int) -> list[str]:
    # The worker numbers utterances from 1; 0 is the default of the seed's results, which
    # carry no id.
    return [f"utt {utterance_id}"] if utterance_id else []


def _speaker(speaker_id: SpeakerId) -> list[str]:
    return [f"speaker {speaker_id}"] if speaker_id is not None else []


def _short(value: Any) -> str:
    # Audio or long text would swamp a one-line view.
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _painter(color: bool | None) -> Painter:
    enabled = sys.stdout.isatty() if color is None else color

    def paint(text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if enabled else text

    return paint
