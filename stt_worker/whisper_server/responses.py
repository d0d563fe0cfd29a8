"""What the whisper-server answers: `RequestError`, OpenAI's error shape and `verbose_json`.

Every refusal, ours or Starlette's (404, 405), has OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so OpenAI clients report it as they would
one of OpenAI's.
"""

from __future__ import annotations

import zlib
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stt_worker.core.errors import ErrorCode
from stt_worker.engines.base import Transcript


class RequestError(Exception):
    """A request we answer with an OpenAI-shaped error instead of a transcript."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}

    def response(self) -> Response:
        body = error_body(self.message, kind=self.kind, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def error_body(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own refusals (404 unknown path, 405 wrong method) in OpenAI's shape too.
    assert isinstance(exc, HTTPException)
    body = error_body(str(exc.detail), kind="invalid_request_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after answering, so uvicorn logs the traceback too.
    body = error_body("Internal server error.", kind="server_error", code=ErrorCode.INTERNAL_ERROR)
    return JSONResponse(body, status_code=500)


def verbose_json(transcript: Transcript, *, words: bool = False) -> dict[str, Any]:
    """OpenAI's `verbose_json` body. `language` is the ISO code the model reports ("en").

    Segments are always there (OpenAI leaves them out when only `word` granularity is asked
    for; clients read them as optional, and they carry the no-speech figures our HTTP engine
    filters on). With `words`, the words too, each with its `probability` besides OpenAI's
    `word`, `start` and `end`.
    """
    body = {
        "task": "transcribe",
        "language": transcript.language,
        "duration": round(transcript.audio_s, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": round(segment.start_s, 3),
                "end": round(segment.end_s, 3),
                # Whisper's convention, which clients rely on: segment texts carry their
                # leading space, so `"".join(texts).strip()` is the whole text.
                "text": f" {segment.text.strip()}",
                # Token ids are not kept by our engines; the field is there for strict clients.
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": segment.avg_logprob,
                "compression_ratio": _compression_ratio(segment.text),
                "no_speech_prob": segment.no_speech_prob,
            }
            for index, segment in enumerate(transcript.segments)
        ],
    }
    if words:
        body["words"] = [
            {
                "word": word.word.strip(),
                "start": round(word.start_s, 3),
                "end": round(word.end_s, 3),
                "probability": round(word.probability, 4),
            }
            for word in transcript.words
        ]
    return body


def _compression_ratio(text: str) -> float:
    # Whisper's repetition measure: looping text compresses well.
    raw = text.encode()
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0
