"""Log setup: one JSON object per line in production, readable text on a terminal, and the
session id and trace id on every line logged while a session's message is handled."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`. uvicorn adds
# `color_message`, the same text with terminal escapes.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


@contextlib.contextmanager
def session_context(session_id: str, trace_id: str | None) -> Iterator[None]:
    """Lines logged inside carry this session's id and trace id (async-safe: contextvars)."""
    session_token = _session_id.set(session_id)
    trace_token = _trace_id.set(trace_id)
    try:
        yield
    finally:
        _trace_id.reset(trace_token)
        _session_id.reset(session_token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in (("session_id", _session_id), ("trace_id", _trace_id)):
            value = variable.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    """`12:00:01 INFO    stt_worker.runtime.sessions: session opened  session_id=abc ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and value is not None
        }
        if fields:
            text += "  " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def setup_logging(level: str, log_format: Literal["auto", "json", "text"] = "auto") -> None:
    """Configure the root logger once (the CLI calls this; libraries never do)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601, UTC
                reserved_attrs=sorted(_STANDARD - {"message"}),
            )
        )
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
