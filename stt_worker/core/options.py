"""Per-session options of a `start` message: each checked on its own, within its bound.

`session_options` lays a `start`'s options over the worker's `SessionConfig`. A value that
does not fit is refused for its field alone (an `invalid_field` error that names it) and the
session keeps the worker's setting for that field, so one bad option never costs the session
(docs/protocol.md lists the options, their defaults and bounds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.protocol import Start, shown
from stt_worker.core.session_config import SessionConfig

# Whisper conditions on at most 224 prompt tokens, its leading space included. Whisper's
# byte-level BPE spends at most one token per UTF-8 byte, so 223 bytes always fit, in any
# script, with no tokenizer at hand (223 ASCII characters, about 40 English words).
MAX_PROMPT_BYTES = 223

# Bounds of the timing options, in ms: (least, most).
ENDPOINT_MS = (60, 5000)
BARGE_IN_MS = (20, 3000)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the worker's engines can do, for the options that depend on it."""

    # False: an English-only model, which cannot translate; None: unknown (an HTTP backend
    # decides for itself).
    multilingual: bool | None = None
    # Smart Turn is loaded (STT_ENDPOINT_MODE=turn), which `turn` mode needs.
    smart_turn: bool = False


class _Refused(ValueError):
    """The option's value does not fit: why, for the error message."""


def _choice(*allowed: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise _Refused(f"must be one of {', '.join(allowed)}")
        return value

    return check


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Refused("must be true or false")
    return value


def _ms(bounds: tuple[int, int]) -> Callable[[Any], Any]:
    least, most = bounds

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise _Refused(f"must be a whole number of ms from {least} to {most}")
        return value

    return check


def _prompt(value: Any) -> Any:
    if not isinstance(value, str):
        raise _Refused("must be a string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_PROMPT_BYTES:
        raise _Refused(f"is {size} bytes of UTF-8, more than {MAX_PROMPT_BYTES}")
    return value.strip() or None


def _barge_in(value: Any) -> dict[str, bool]:
    mode = _choice("off", "vad", "words")(value)
    return {"enable_interrupt_detection": mode != "off", "barge_in_words": mode == "words"}


# Each option: how its value is checked, and the `SessionConfig` field it sets (None: the
# check returns the fields to set).
_OPTIONS: dict[str, tuple[Callable[[Any], Any], str | None]] = {
    "prompt": (_prompt, "prompt"),
    "task": (_choice("transcribe", "translate"), "task"),
    "partials": (_flag, "partials"),
    "word_timestamps": (_flag, "word_timestamps"),
    "endpoint_mode": (_choice("fixed", "adaptive", "turn"), "endpoint_mode"),
    "endpoint_silence_ms": (_ms(ENDPOINT_MS), "endpoint_silence_ms"),
    "endpoint_min_silence_ms": (_ms(ENDPOINT_MS), "endpoint_min_ms"),
    "endpoint_max_silence_ms": (_ms(ENDPOINT_MS), "endpoint_max_ms"),
    "turn_max_ms": (_ms(ENDPOINT_MS), "turn_max_ms"),
    "barge_in_mode": (_barge_in, None),
    "interrupt_min_speech_ms": (_ms(BARGE_IN_MS), "interrupt_min_speech_ms"),
    "barge_in_probe_ms": (_ms(BARGE_IN_MS), "probe_step_ms"),
    "turn_events": (_flag, "turn_events"),
}
OPTION_NAMES = tuple(_OPTIONS)


def session_options(
    start: Start, base: SessionConfig, capabilities: Capabilities
) -> tuple[SessionConfig, list[ProtocolError]]:
    """`base` with `start`'s options laid over it, and one `invalid_field` error for each
    option refused (which keeps `base`'s value)."""
    changes: dict[str, Any] = {}
    refused: list[ProtocolError] = []
    for name, (check, field) in _OPTIONS.items():
        value = getattr(start, name)
        if value is None:
            continue  # not given: the worker's setting
        try:
            checked = check(value)
            _check_capability(name, checked, capabilities)
        except _Refused as why:
            refused.append(
                ProtocolError(
                    f"start option {name!r} = {shown(value)} {why}; the session keeps its "
                    "default for it",
                    code=ErrorCode.INVALID_FIELD,
                )
            )
            continue
        changes.update(checked if field is None else {field: checked})
    return (dataclasses.replace(base, **changes) if changes else base), refused


def _check_capability(name: str, value: Any, capabilities: Capabilities) -> None:
    if name == "task" and value == "translate" and capabilities.multilingual is False:
        raise _Refused("needs a multilingual model; this worker runs an English-only one")
    if name == "endpoint_mode" and value == "turn" and not capabilities.smart_turn:
        raise _Refused("needs Smart Turn, which this worker loads only with STT_ENDPOINT_MODE=turn")
