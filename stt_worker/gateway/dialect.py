"""Result frames: the worker's published messages as the JSON each kind of client reads.

Pure (no I/O). Every dialect gets the worker's fields unchanged plus ``text`` (= ``transcript``);
the dialects differ only where their clients switch on ``type``:

- ``native`` and ``onnx``: ``type`` stays ``transcript`` (the ONNX server's own type, with
  ``is_final``), so ONNX clients read native frames as they are;
- ``parakeet``: ``type`` becomes ``partial`` or ``final``, as Parakeet-TDT clients expect.

``session_closed`` reaches native clients only: the peers' clients never had it, and a flush
(``__CTRL__:EOS``, ``{"type": "final"}``) or reset closes one worker session per call.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stt_worker.gateway.control import Dialect

_encoder = msgspec.json.Encoder()


def render(message: dict[str, Any], dialect: Dialect) -> str | None:
    """The JSON frame for one worker message, or None when this dialect does not show it."""
    kind = message.get("type")
    if kind == "session_closed" and dialect != "native":
        return None
    if kind == "transcript":
        message = {**message, "text": message.get("transcript", "")}
        if dialect == "parakeet":
            message["type"] = "final" if message.get("is_final") else "partial"
    return _encoder.encode(message).decode()


def is_partial(message: dict[str, Any]) -> bool:
    """Partials are superseded by the next partial or final: the only frames worth dropping."""
    return message.get("type") == "transcript" and not message.get("is_final")


def empty_final(session_id: str) -> dict[str, Any]:
    """The answer to a flush that found nothing left to transcribe, in the worker's shape.

    Peer clients wait for one final after ``__CTRL__:EOS`` or ``{"type": "final"}``; the worker
    sends none when every utterance was already finalised at its endpoint.
    """
    return {
        "type": "transcript",
        "session_id": session_id,
        "transcript": "",
        "is_partial": False,
        "is_final": True,
        "end_reason": "end",
    }


def error_frame(code: str, message: str, session_id: str | None = None) -> dict[str, Any]:
    """A gateway-made ``error``, shaped like the worker's."""
    return {"type": "error", "code": code, "message": message, "session_id": session_id}
