"""Result frames: the worker's messages, decoded, as the JSON each kind of client reads; and
the gateway's own messages (`EmptyFinal`, `GatewayError`) in the worker's shape.

Pure (no I/O). Every dialect gets the worker's fields unchanged plus ``text`` (= ``transcript``);
the dialects differ only where their clients switch on ``type``:

- ``native`` and ``onnx``: ``type`` stays ``transcript`` (the ONNX server's own type, with
  ``is_final``), so ONNX clients read native frames as they are;
- ``parakeet``: ``type`` becomes ``partial`` or ``final``, as Parakeet-TDT clients expect.

``session_closed`` reaches native clients only: the peers' clients never had it, and a flush
(``__CTRL__:EOS``, ``{"type": "final"}``) or reset closes one worker session per call.
"""

from __future__ import annotations

import msgspec

from stt_worker.core.protocol import (
    EndReason,
    Error,
    ServerMessage,
    SessionClosed,
    Transcription,
)
from stt_worker.gateway.control import Dialect

_encoder = msgspec.json.Encoder()
# An error's message quotes the input it refuses; cut, it cannot make a reply larger than the
# frame it answers (a 256 KB field of U+0085 would otherwise come back as 640 KB of escapes).
MAX_ERROR_MESSAGE_CHARS = 240


# Fields in the order their frames have always had; `type` comes first, hence kw_only.
class EmptyFinal(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a flush that found nothing left to transcribe, in the worker's shape.

    Peer clients wait for one final after ``__CTRL__:EOS`` or ``{"type": "final"}``; the worker
    sends none when every utterance was already finalised at its endpoint.
    """

    type: str = "transcript"
    session_id: str
    transcript: str = ""
    is_partial: bool = False
    is_final: bool = True
    end_reason: EndReason = "end"


class GatewayError(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway-made ``error``, shaped like the worker's."""

    type: str = "error"
    code: str
    message: str
    session_id: str | None = None


# What a connection sends its client.
Outgoing = ServerMessage | EmptyFinal | GatewayError


def render(message: Outgoing, dialect: Dialect) -> str | None:
    """The JSON frame for one message, or None when this dialect does not show it."""
    match message:
        case SessionClosed() if dialect != "native":
            return None
        case Error() | GatewayError() if len(message.message) > MAX_ERROR_MESSAGE_CHARS:
            cut = message.message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
            return _encoder.encode(msgspec.structs.replace(message, message=cut)).decode()
        case Transcription() | EmptyFinal():
            frame = msgspec.to_builtins(message)
            frame["text"] = message.transcript
            if dialect == "parakeet":
                frame["type"] = "final" if message.is_final else "partial"
            return _encoder.encode(frame).decode()
    return _encoder.encode(message).decode()


def is_partial(message: Outgoing) -> bool:
    """Partials are superseded by the next partial or final: the only frames worth dropping."""
    return isinstance(message, Transcription) and not message.is_final
