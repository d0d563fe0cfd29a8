"""One-line, human-readable rendering of the worker's output messages, for ``tail`` and ``demo``.

Messages arrive as plain decoded msgpack maps with a ``type`` field (``transcript``,
``interrupt``, ``error``, ``session_closed``); the seed's transcription results have no
``type``, so a ``transcript`` key is enough. Anything else gets a compact generic line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

_RESET = "\033[0m"
_DIM = "\033[2m"
_BOLD_GREEN = "\033[1;32m"
_YELLOW = "\033[33m"
_RED = "\033[31m"
_CYAN = "\033[36m"
_MAX_VALUE_CHARS = 60


def format_message(
    msg: Mapping[str, Any], *, latency_s: float | None = None, color: bool | None = None
) -> str:
    """Render one output message; `latency_s` (finals) is shown as "after last audio".

    `color` defaults to whether stdout is a terminal, so pipes and files get plain text.
    """
    paint = _painter(sys.stdout.isatty() if color is None else color)
    session = paint(f"[{msg.get('session_id', '?')}]", _DIM)
    kind = msg.get("type", "transcript" if "transcript" in msg else None)

    if kind == "transcript":
        final = bool(msg.get("is_final"))
        details = [f"seq {msg.get('sequence', '?')}"]
        if "utterance_id" in msg:  # additive field; the seed's results lack it
            details.append(f"utt {msg['utterance_id']}")
        details += _speaker(msg)
        if final and latency_s is not None:
            details.append(f"{latency_s:.2f} s after last audio")
        text = str(msg.get("transcript", "")).strip() or "(no speech)"
        line = paint(f"✔ {text}", _BOLD_GREEN) if final else paint(f"… {text}", _DIM)
        return f"{session} {line}  {paint('(' + ', '.join(details) + ')', _DIM)}"

    if kind == "interrupt":
        details = [f"utt {msg['utterance_id']}"] if "utterance_id" in msg else []
        details += _speaker(msg)
        suffix = f"  {paint('(' + ', '.join(details) + ')', _DIM)}" if details else ""
        return f"{session} {paint('⚡ interrupt', _YELLOW)}{suffix}"

    if kind == "error":
        text = f"✖ {msg.get('code', 'error')}: {msg.get('message', '')}"
        return f"{session} {paint(text, _RED)}"

    if kind == "session_closed":
        details = [str(msg.get("reason", "?"))]
        if "utterances" in msg:
            details.append(f"{msg['utterances']} utterances")
        closed = paint("■ session closed", _CYAN)
        return f"{session} {closed}  {paint('(' + ', '.join(details) + ')', _DIM)}"

    fields = " ".join(
        f"{key}={_short(value)}" for key, value in msg.items() if key not in ("type", "session_id")
    )
    return f"{session} ? {kind or 'message'} {fields}".rstrip()


def _speaker(msg: Mapping[str, Any]) -> list[str]:
    speaker = msg.get("speaker_id")
    return [f"speaker {speaker}"] if speaker is not None else []


def _short(value: Any) -> str:
    # Audio or long text would swamp a one-line view.
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _painter(enabled: bool) -> Callable[[str, str], str]:
    def paint(text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if enabled else text

    return paint
