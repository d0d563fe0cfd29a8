"""The error-code registry: every code once, unchanged, documented, and the only source of
codes in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stt_worker.core import protocol
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
from stt_worker.tools import error_docs

PACKAGE = Path(__file__).resolve().parent.parent / "stt_worker"

# Clients switch on these strings: a code may be added, never renamed or removed.
PUBLISHED_CODES = {
    # worker
    "malformed_msgpack",
    "not_a_map",
    "missing_type",
    "unknown_type",
    "invalid_field",
    "invalid_audio",
    "missing_audio",
    "unsupported_audio_format",
    "chunk_too_large",
    "chunk_out_of_order",
    "unknown_session",
    "audio_dropped",
    "too_many_sessions",
    "overloaded",
    "engine_error",
    "shutting_down",
    "echo_cancellation_unavailable",
    "invalid_session_id",
    "internal_error",
    "invalid_message",
    "model_not_found",
    "backend_unavailable",
    "backend_rejected",
    "backend_bad_response",
    # gateway
    "malformed_json",
    "session_ended",
    "forbidden_origin",
    "unauthorized",
    "client_too_slow",
    "nats_unavailable",
    "too_many_connections",
    # whisper-server
    "unsupported_media_type",
    "unsupported_response_format",
    "no_file",
    "file_too_large",
    "unsupported_language",
    "empty_audio",
    "audio_too_long",
}


def test_every_published_code_is_registered_once_with_its_string() -> None:
    assert {code.value for code in ErrorCode} >= PUBLISHED_CODES
    assert len({code.value for code in ErrorCode}) == len(ErrorCode)
    assert protocol.ErrorCode is ErrorCode  # still importable where it used to live


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_each_code_says_who_sends_it_and_what_it_means_in_one_line(code: ErrorCode) -> None:
    assert code.emitters.names
    assert code.meaning.strip() and "\n" not in code.meaning and "|" not in code.meaning


def test_exceptions_take_their_default_codes_from_the_registry() -> None:
    defaults = {
        SttError: ErrorCode.INTERNAL_ERROR,
        ProtocolError: ErrorCode.INVALID_MESSAGE,
        EngineError: ErrorCode.ENGINE_ERROR,
        ModelNotFoundError: ErrorCode.MODEL_NOT_FOUND,
        OverloadedError: ErrorCode.OVERLOADED,
        BusError: ErrorCode.NATS_UNAVAILABLE,
        ConnectError: ErrorCode.NATS_UNAVAILABLE,
    }
    for exception, code in defaults.items():
        assert exception("x").code is code, exception
    assert ProtocolError("x", code=ErrorCode.NOT_A_MAP).code == "not_a_map"


def test_docs_errors_md_is_generated_from_the_registry() -> None:
    written = error_docs.DEFAULT_PATH.read_text()
    assert written == error_docs.render(), "docs/errors.md is stale: run `./dev docs`"
    for code in ErrorCode:
        assert f"| `{code.value}` |" in written


def _literal_codes(path: Path) -> list[str]:
    """`code="..."` keywords and `code = "..."` class attributes written as string literals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.keyword) and node.arg == "code":
            value = node.value
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                continue
            value = node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {value.value!r}")
    return found


def test_no_module_spells_a_code_outside_the_registry() -> None:
    literals = [each for path in sorted(PACKAGE.rglob("*.py")) for each in _literal_codes(path)]
    assert literals == []
