"""The generator of ``docs/errors.md``: the error-code registry (`ErrorCode`) as a table.

    python -m stt_worker.tools.error_docs [PATH]   (default: docs/errors.md of this checkout)

A test compares the file with `render()`, so a code added to the registry without running
this fails CI instead of going undocumented.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from stt_worker.core.errors import (
    EngineError,
    ErrorCode,
    ModelNotFoundError,
    OverloadedError,
    ProtocolError,
    SttError,
)
from stt_worker.runtime.bus import BusError
from stt_worker.runtime.connection import ConnectError
from stt_worker.tools.generated_page import print_or_write

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
_EXCEPTIONS = (
    SttError,
    ProtocolError,
    EngineError,
    ModelNotFoundError,
    OverloadedError,
    BusError,
    ConnectError,
)

_HEADER = """\
# Error codes

Generated from `stt_worker/core/errors.py` by `python -m stt_worker.tools.error_docs --write`: edit
the registry, not this file.

Every code sent to a client, once. The **worker** publishes them in `error` messages on
`ai.voice.transcription.{session_id}`; the **gateway** sends them in `error` frames (and
forwards the worker's); the **whisper-server** puts them in the `code` of its OpenAI-shaped
error bodies. The strings are stable: clients may switch on them.
"""


def render() -> str:
    """The whole of ``docs/errors.md``."""
    lines = [_HEADER, "| code | sent by | meaning |", "|---|---|---|"]
    lines += [
        f"| `{code.value}` | {', '.join(code.emitters.names)} | {code.meaning} |"
        for code in ErrorCode
    ]
    lines += [
        "",
        "## Exceptions and their default codes",
        "",
        "A raise may give another code (`ProtocolError(..., code=ErrorCode.NOT_A_MAP)`).",
        "",
        "| exception | module | default code |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{each.__name__}` | `{each.__module__}` | `{ErrorCode(each.code).value}` |"
        for each in _EXCEPTIONS
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return print_or_write(render, DEFAULT_PATH, argv, prog="python -m stt_worker.tools.error_docs")


if __name__ == "__main__":
    sys.exit(main())
