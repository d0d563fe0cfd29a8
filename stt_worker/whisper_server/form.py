"""The transcription form: reading the multipart body within its bounds, then its fields.

The body (multipart framing included) may not exceed `max_upload_bytes`: a larger
`Content-Length` is refused before reading, and a chunked body is cut off as soon as it
grows past the limit (413 either way). The whole body must arrive within `timeout_s`, or
the answer is 408 and the connection is closed: a client trickling a byte a second holds
an upload place for that long at most. The file part is spooled by Starlette (to disk past
1 MiB), so a waiting request holds little memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from faster_whisper.tokenizer import _LANGUAGE_CODES
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from stt_worker.core.errors import ErrorCode
from stt_worker.engines.base import DecodeOptions
from stt_worker.whisper_server.prompt import bounded_prompt
from stt_worker.whisper_server.responses import RequestError

RESPONSE_FORMATS = ("json", "verbose_json", "text", "srt", "vtt")
TIMESTAMP_GRANULARITIES = ("segment", "word")
# OpenAI's clients send the list as repeated `timestamp_granularities[]` parts; plain
# `timestamp_granularities` (curl users) is read too.
_GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
# Form fields (model, language, prompt, ...) are small; this caps what one field may buffer.
_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 32


@dataclass(frozen=True)
class Transcription:
    """A request's fields, validated: what to transcribe and how to answer."""

    upload: UploadFile
    options: DecodeOptions
    response_format: str
    # What verbose_json lists: `segment` (the default) and/or `word`.
    granularities: frozenset[str] = frozenset({"segment"})


def check_headers(request: Request, max_upload_bytes: int) -> None:
    """The refusals that need no body: too large a declared length, not multipart."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
        raise _too_large(max_upload_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise RequestError(
            415,
            f"Expected a multipart/form-data body, got {content_type or 'none'!r}.",
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )


async def read_form(request: Request, *, max_upload_bytes: int, timeout_s: float) -> FormData:
    """The parsed body; the caller closes it (that deletes the spooled file)."""
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), max_upload_bytes),
        max_files=1,
        max_fields=_MAX_FIELDS,
        max_part_size=_MAX_FIELD_BYTES,
    )
    try:
        async with asyncio.timeout(timeout_s):
            return await parser.parse()
    except TimeoutError as exc:
        raise RequestError(
            408,
            f"The request body did not arrive within {timeout_s:g} s "
            "(WHISPER_SERVER_BODY_TIMEOUT_S).",
            code=ErrorCode.REQUEST_TIMEOUT,
            # Close: what is left of a trickled body is not worth waiting for.
            headers={"Connection": "close"},
        ) from exc
    except MultiPartException as exc:
        raise RequestError(400, f"Malformed multipart body: {exc.message}") from exc
    except ClientDisconnect as exc:
        # Nobody will read this answer; it only ends the request quietly.
        raise RequestError(400, "The client disconnected during the upload.") from exc


def transcription(form: FormData) -> Transcription:
    """The form's fields, checked; raises `RequestError` (400) on a bad one."""
    response_format = _field(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(
            400,
            f"Unsupported response_format {response_format!r}; "
            f"supported: {', '.join(RESPONSE_FORMATS)}.",
            param="response_format",
            code=ErrorCode.UNSUPPORTED_RESPONSE_FORMAT,
        )
    granularities = _granularities(form, response_format)
    options = DecodeOptions(
        language=_language(form),
        prompt=bounded_prompt(_field(form, "prompt")),
        word_timestamps="word" in granularities,
    )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError(
            400, "A 'file' part with the audio is required.", param="file", code=ErrorCode.NO_FILE
        )
    return Transcription(
        upload=upload,
        options=options,
        response_format=response_format,
        granularities=granularities,
    )


async def _limited(
    chunks: AsyncGenerator[bytes, None], max_bytes: int
) -> AsyncGenerator[bytes, None]:
    """Pass the body through, failing as soon as it exceeds `max_bytes` (chunked uploads)."""
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            yield chunk
    finally:
        await chunks.aclose()


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(
        413,
        f"The request body exceeds the limit of {max_bytes} bytes.",
        param="file",
        code=ErrorCode.FILE_TOO_LARGE,
        # No `Connection: close`: closing with the upload unread resets the socket and the
        # client sees a broken connection instead of this 413. uvicorn reads and discards
        # the rest of the body (nothing is buffered) and keeps the connection.
    )


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"{name!r} must be a text field, not a file.", param=name)
    return value.strip() or None


def _language(form: FormData) -> str | None:
    language = _field(form, "language")
    if language is None:
        return None
    language = language.lower()
    if language not in _LANGUAGE_CODES:
        raise RequestError(
            400,
            f"Unsupported language {language!r}; use an ISO-639-1 code such as 'en'.",
            param="language",
            code=ErrorCode.UNSUPPORTED_LANGUAGE,
        )
    return language


def _granularities(form: FormData, response_format: str) -> frozenset[str]:
    """`timestamp_granularities[]`, checked as OpenAI's API checks it: only with
    verbose_json, whose segments it defaults to."""
    values = [value for name in _GRANULARITY_FIELDS for value in form.getlist(name)]
    if not values:
        return frozenset({"segment"})
    param = _GRANULARITY_FIELDS[0]
    if any(not isinstance(value, str) for value in values):
        raise RequestError(400, f"{param!r} must be a text field, not a file.", param=param)
    wanted = frozenset(str(value).strip() for value in values)
    unknown = sorted(wanted.difference(TIMESTAMP_GRANULARITIES))
    if unknown:
        raise RequestError(
            400,
            f"Unsupported timestamp granularity {unknown[0]!r}; supported: "
            f"{', '.join(TIMESTAMP_GRANULARITIES)}.",
            param=param,
            code=ErrorCode.UNSUPPORTED_TIMESTAMP_GRANULARITY,
        )
    if response_format != "verbose_json":
        raise RequestError(
            400,
            "timestamp_granularities[] needs response_format 'verbose_json', "
            f"not {response_format!r}.",
            param=param,
            code=ErrorCode.UNSUPPORTED_TIMESTAMP_GRANULARITY,
        )
    return wanted
