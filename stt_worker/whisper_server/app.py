"""Our OpenAI-compatible Whisper service (`stt-streaming whisper-server`): one model over HTTP.

Deployed as `whisper-predictor` on a CPU or GPU node; the worker's `http` engine (and any
OpenAI client) talks to it. Endpoints:

- `POST /v1/audio/transcriptions`: multipart form, as OpenAI's API. `file` (required; WAV
  of any rate and channel count, or anything FFmpeg decodes: MP3, FLAC, OGG/Opus, WebM,
  M4A, ...), `language` (ISO-639-1), `prompt`, `response_format` (`json`, `verbose_json`,
  `text`). `model` is accepted with any value: the server serves the one model it loaded.
  `temperature` is accepted and ignored: the engine decodes as configured
  (`WHISPER_BEAM_SIZE`). Every answer carries `X-Inference-Time-Ms`, the
  engine's own time, so a client can tell network and queueing overhead from inference.
- `GET /health`, `GET /v1/models`.

Bounds: at most `max_concurrency` inferences run at once and at most `max_queue` more
requests are held (a request holds its place from arrival, upload and decoding included,
to its answer); beyond that the answer is 503 with `Retry-After: 1` at once, which the
`http` engine retries. The request body (multipart framing included) may not exceed
`max_upload_bytes`: a larger `Content-Length` is refused before reading, and a chunked body
is cut off as soon as it grows past the limit (413 either way). Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import signal
import time
import wave
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import soxr
import uvicorn
from faster_whisper.tokenizer import _LANGUAGE_CODES
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ, check_format
from stt_worker.core.errors import ErrorCode, ProtocolError, SttError
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript

logger = logging.getLogger(__name__)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "verbose_json", "text")
INFERENCE_TIME_HEADER = "X-Inference-Time-Ms"
RETRY_AFTER_S = 1
# Form fields (model, language, prompt, ...) are small; this caps what one field may buffer.
_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 32


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


def create_app(
    engine: Engine,
    *,
    model_name: str,
    max_concurrency: int,
    max_queue: int,
    max_upload_bytes: int,
    max_audio_s: float = 1800.0,
) -> Starlette:
    """The ASGI app; its lifespan warms the engine up, so it answers only once it is fast."""
    service = _Service(
        engine,
        model_name=model_name,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_upload_bytes=max_upload_bytes,
        max_audio_s=max_audio_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = time.perf_counter()
        await engine.warmup()
        logger.info(
            "whisper server ready: %s %s on %s (warm-up %.2f s)",
            engine.info.name,
            engine.info.model,
            engine.info.device,
            time.perf_counter() - started,
        )
        yield

    return Starlette(
        routes=[
            Route(TRANSCRIPTIONS_PATH, service.transcribe, methods=["POST"]),
            Route("/health", service.health, methods=["GET"]),
            Route("/v1/models", service.models, methods=["GET"]),
        ],
        exception_handlers={
            RequestError: _request_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )


class _Service:
    """The endpoints, sharing one engine and the admission bounds."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_name: str,
        max_concurrency: int,
        max_queue: int,
        max_upload_bytes: int,
        max_audio_s: float,
    ) -> None:
        self._engine = engine
        # Compressed bytes do not bound decoded audio (low-bitrate Opus: hours in 25 MiB).
        self._max_samples = int(max_audio_s * SAMPLE_RATE_HZ)
        self._model_name = model_name
        self._capacity = max_concurrency + max_queue
        self._admitted = 0
        self._inference = asyncio.Semaphore(max_concurrency)
        self._max_upload_bytes = max_upload_bytes

    async def health(self, request: Request) -> Response:
        info = self._engine.info
        return JSONResponse(
            {"status": "ok", "model": self._model_name, "engine": info.name, "device": info.device}
        )

    async def models(self, request: Request) -> Response:
        model = {"id": self._model_name, "object": "model", "owned_by": "stt-streaming"}
        return JSONResponse({"object": "list", "data": [model]})

    async def transcribe(self, request: Request) -> Response:
        # Cheap refusals first, before a byte of the body is read.
        self._check_headers(request)
        if self._admitted >= self._capacity:
            raise RequestError(
                503,
                "The server is busy; retry shortly.",
                code=ErrorCode.OVERLOADED,
                kind="server_error",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._admitted += 1
        try:
            return await self._transcribe_admitted(request)
        finally:
            self._admitted -= 1

    def _check_headers(self, request: Request) -> None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_upload_bytes:
            raise _too_large(self._max_upload_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
            raise RequestError(
                415,
                f"Expected a multipart/form-data body, got {content_type or 'none'!r}.",
                code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            )

    async def _transcribe_admitted(self, request: Request) -> Response:
        form = await self._read_form(request)
        try:
            response_format = _field(form, "response_format") or "json"
            if response_format not in RESPONSE_FORMATS:
                raise RequestError(
                    400,
                    f"Unsupported response_format {response_format!r}; "
                    f"supported: {', '.join(RESPONSE_FORMATS)}.",
                    param="response_format",
                    code=ErrorCode.UNSUPPORTED_RESPONSE_FORMAT,
                )
            options = DecodeOptions(language=_language(form), prompt=_field(form, "prompt"))
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise RequestError(
                    400,
                    "A 'file' part with the audio is required.",
                    param="file",
                    code=ErrorCode.NO_FILE,
                )
            data = await upload.read()
        finally:
            await form.close()

        audio = await asyncio.to_thread(decode_upload, data, self._max_samples)
        async with self._inference:
            transcript = await self._run_engine(audio, options)
        headers = {INFERENCE_TIME_HEADER: f"{transcript.inference_s * 1000:.1f}"}
        if response_format == "text":
            return PlainTextResponse(transcript.text, headers=headers)
        if response_format == "verbose_json":
            return JSONResponse(verbose_json(transcript), headers=headers)
        return JSONResponse({"text": transcript.text}, headers=headers)

    async def _read_form(self, request: Request) -> FormData:
        parser = MultiPartParser(
            request.headers,
            _limited(request.stream(), self._max_upload_bytes),
            max_files=1,
            max_fields=_MAX_FIELDS,
            max_part_size=_MAX_FIELD_BYTES,
        )
        try:
            return await parser.parse()
        except MultiPartException as exc:
            raise RequestError(400, f"Malformed multipart body: {exc.message}") from exc
        except ClientDisconnect as exc:
            # Nobody will read this answer; it only ends the request quietly.
            raise RequestError(400, "The client disconnected during the upload.") from exc

    async def _run_engine(self, audio: Audio, options: DecodeOptions) -> Transcript:
        try:
            return await self._engine.transcribe(audio, options)
        except SttError as exc:
            logger.error("transcription failed: %s", exc, exc_info=exc)
            raise RequestError(
                500, f"Transcription failed: {exc}", code=exc.code, kind="server_error"
            ) from exc


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


# ---------------------------------------------------------------- audio


def decode_upload(data: bytes, max_samples: int = 1800 * SAMPLE_RATE_HZ) -> Audio:
    """Float32 16 kHz mono from an uploaded file, at most `max_samples` long; blocking (run
    it off the event loop)."""
    if not data:
        raise RequestError(
            400, "The uploaded file is empty.", param="file", code=ErrorCode.EMPTY_AUDIO
        )
    audio = _decode_wav_pcm16(data, max_samples)
    if audio is None:
        audio = _decode_with_av(data, max_samples)
    if audio.size == 0:
        raise RequestError(
            400,
            "The uploaded file contains no audio samples.",
            param="file",
            code=ErrorCode.EMPTY_AUDIO,
        )
    return audio


def _too_long(max_samples: int) -> RequestError:
    return RequestError(
        413,
        f"The audio is longer than {max_samples // SAMPLE_RATE_HZ} s "
        "(WHISPER_SERVER_MAX_AUDIO_S); split it.",
        param="file",
        code=ErrorCode.AUDIO_TOO_LONG,
    )


def _decode_wav_pcm16(data: bytes, max_samples: int) -> Audio | None:
    """The fast path for 16-bit PCM WAV (what our clients send); None for anything else."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2:
                return None  # 8/24/32-bit and float WAV go through FFmpeg
            sample_rate_hz, channels = wav.getframerate(), wav.getnchannels()
            if sample_rate_hz and wav.getnframes() / sample_rate_hz * SAMPLE_RATE_HZ > max_samples:
                raise _too_long(max_samples)
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        return None  # e.g. WAVE_FORMAT_EXTENSIBLE, which `wave` rejects and FFmpeg reads
    try:
        check_format(sample_rate_hz, channels)
    except ProtocolError as exc:
        raise RequestError(
            400, f"Unsupported WAV: {exc}", param="file", code=ErrorCode.INVALID_AUDIO
        ) from exc
    # A truncated upload may end mid-frame; the whole frames before it are still good audio.
    usable = len(pcm) - len(pcm) % (2 * channels)
    samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if sample_rate_hz != SAMPLE_RATE_HZ and samples.size:
        samples = soxr.resample(samples, sample_rate_hz, SAMPLE_RATE_HZ)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_with_av(data: bytes, max_samples: int) -> Audio:
    try:
        pieces = list(_decoded_pcm16(data, max_samples))
    except RequestError:
        raise
    # PyAV raises a zoo of types (InvalidDataError, IndexError for "no audio stream", ...)
    # for bad input; all of them mean "not audio we can read", mapped here in one place.
    except Exception as exc:
        logger.debug("undecodable upload of %d bytes: %r", len(data), exc)
        raise RequestError(
            400,
            f"Could not decode the audio file: {exc}",
            param="file",
            code=ErrorCode.INVALID_AUDIO,
        ) from exc
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32) / 32768.0


def _decoded_pcm16(data: bytes, max_samples: int) -> Iterator[npt.NDArray[np.int16]]:
    """16 kHz mono int16 pieces of the first audio stream, stopping past `max_samples`."""
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)
    total = 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        frames = container.decode(audio=0)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except av.error.InvalidDataError:
                continue  # a damaged packet; the rest of the file may be fine
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1)
                total += pcm.size
                if total > max_samples:
                    raise _too_long(max_samples)
                yield pcm
            if frame is None:
                return


# ---------------------------------------------------------------- responses


def verbose_json(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's `verbose_json` body. `language` is the ISO code the model reports ("en")."""
    return {
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


def _compression_ratio(text: str) -> float:
    # Whisper's repetition measure: looping text compresses well.
    raw = text.encode()
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def _error_body(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    body = _error_body(exc.message, kind=exc.kind, param=exc.param, code=exc.code)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own refusals (404 unknown path, 405 wrong method) in OpenAI's shape too.
    assert isinstance(exc, HTTPException)
    body = _error_body(str(exc.detail), kind="invalid_request_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after answering, so uvicorn logs the traceback too.
    body = _error_body("Internal server error.", kind="server_error", code=ErrorCode.INTERNAL_ERROR)
    return JSONResponse(body, status_code=500)


# ---------------------------------------------------------------- process


def app_for(settings: Settings, engine: Engine) -> Starlette:
    """The app configured by `settings` (the `WHISPER_SERVER_*` limits)."""
    return create_app(
        engine,
        model_name=engine.info.model,
        max_concurrency=settings.whisper_server_max_concurrency,
        max_queue=settings.whisper_server_max_queue,
        max_upload_bytes=settings.whisper_server_max_upload_bytes,
        max_audio_s=settings.whisper_server_max_audio_s,
    )


def run_server(settings: Settings, engine: Engine, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within `drain_timeout_s`."""
    app = app_for(settings, engine)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,  # our logging setup (the CLI's) formats uvicorn's records too
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which the default
    # handler turns into death by signal; a clean drain should exit 0, as the worker does.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        # uvicorn logs a failed lifespan (e.g. the warm-up) and returns normally.
        raise SttError("the whisper server did not start; see the log above")
