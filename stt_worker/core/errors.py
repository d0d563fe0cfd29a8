"""Exception tree of the worker; each carries the stable ``code`` published to clients.

SttError
├── ProtocolError        a message we cannot accept (bad msgpack, wrong field, ...)
├── EngineError          the speech engine failed on an utterance
│   └── ModelNotFoundError   the configured model is not available locally
└── OverloadedError      a bound was reached (sessions, queued inferences)
"""

from __future__ import annotations


class SttError(Exception):
    """Base of every error the worker reports to a client."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(SttError):
    code = "invalid_message"


class EngineError(SttError):
    code = "engine_error"


class ModelNotFoundError(EngineError):
    code = "model_not_found"


class OverloadedError(SttError):
    code = "overloaded"
