"""The whisper-server's ASGI app: `create_app` and its endpoints, sharing one engine.

Endpoints:

- `POST /v1/audio/transcriptions`: multipart form, as OpenAI's API. `file` (required; see
  `audio.py` for the formats), `language` (ISO-639-1), `prompt` (cut to its last 224
  tokens, `prompt.py`), `response_format` (`json`, `verbose_json`, `text`, `srt`, `vtt`:
  `subtitles.py`), `timestamp_granularities[]` (`segment`, `word`; with `verbose_json`
  only). `model` is accepted with any value: the server serves the one model it loaded.
  `temperature` is accepted and ignored: the engine decodes as configured
  (`WHISPER_BEAM_SIZE`). Every answer carries `X-Inference-Time-Ms`, the engine's own time,
  so a client can tell network and queueing overhead from inference.
- `GET /health` and `GET /metrics` (open to all, for probes and scrapers), `GET /v1/models`.

A request is counted and traced (`observability.py`), passes the API key (`access.py`), then
the upload and queue stages (`admission.py`); it is decoded and transcribed inside its
inference slot, so at most
`max_concurrency` requests hold decoded audio at once, and none holds the slot longer than
its decoded audio (at most `max_audio_s`) takes to transcribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.errors import SttError
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript
from stt_worker.runtime.telemetry.build import UNKNOWN_COMMIT
from stt_worker.whisper_server.access import ApiKeyGate
from stt_worker.whisper_server.admission import Admission
from stt_worker.whisper_server.audio import decode_upload
from stt_worker.whisper_server.form import (
    Transcription,
    check_headers,
    read_form,
    transcription,
)
from stt_worker.whisper_server.observability import TRACER_NAME, Observed, ServerMetrics
from stt_worker.whisper_server.responses import (
    RequestError,
    http_error,
    internal_error,
    request_error,
    verbose_json,
)
from stt_worker.whisper_server.subtitles import srt, vtt

logger = logging.getLogger(__name__)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
MODELS_PATH = "/v1/models"
INFERENCE_TIME_HEADER = "X-Inference-Time-Ms"


def create_app(
    engine: Engine,
    *,
    model_name: str,
    max_concurrency: int,
    max_queue: int,
    max_upload_bytes: int,
    max_audio_s: float = 120.0,
    max_uploads: int = 64,
    body_timeout_s: float = 30.0,
    api_key: str | None = None,
    tracer: trace.Tracer | None = None,
    commit: str = UNKNOWN_COMMIT,
) -> Starlette:
    """The ASGI app; its lifespan warms the engine up, so it answers only once it is fast.

    With `api_key`, every path but `/health` and `/metrics` needs it as a bearer token.
    Without a `tracer`, spans are still made (trace ids reach the logs) but not exported.
    """
    admission = Admission(max_uploads=max_uploads, capacity=max_concurrency + max_queue)
    metrics = ServerMetrics(commit=commit)
    metrics.watch(admission)
    tracer = tracer or TracerProvider().get_tracer(TRACER_NAME)
    service = _Service(
        engine,
        model_name=model_name,
        admission=admission,
        max_concurrency=max_concurrency,
        max_upload_bytes=max_upload_bytes,
        max_audio_s=max_audio_s,
        body_timeout_s=body_timeout_s,
        metrics=metrics,
        tracer=tracer,
    )
    routes = [
        Route(TRANSCRIPTIONS_PATH, service.transcribe, methods=["POST"]),
        Route(HEALTH_PATH, service.health, methods=["GET"]),
        Route(METRICS_PATH, service.metrics, methods=["GET"]),
        Route(MODELS_PATH, service.models, methods=["GET"]),
    ]
    paths = frozenset(route.path for route in routes)
    return Starlette(
        routes=routes,
        middleware=_middleware(metrics, tracer, paths, api_key),
        exception_handlers={
            RequestError: request_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=_warm_up(engine),
    )


def _middleware(
    metrics: ServerMetrics, tracer: trace.Tracer, paths: frozenset[str], api_key: str | None
) -> list[Middleware]:
    """Every request counted and traced; then, with `api_key`, the key checked."""
    middleware = [Middleware(Observed, metrics=metrics, tracer=tracer, routes=paths)]
    if api_key is not None:
        # Probes and scrapers rarely carry keys, and neither path tells anything secret.
        open_paths = frozenset({HEALTH_PATH, METRICS_PATH})
        middleware.append(Middleware(ApiKeyGate, key=api_key, open_paths=open_paths))
    return middleware


def _warm_up(engine: Engine) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the engine warmed up before the first request is taken."""

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

    return lifespan


class _Service:
    """The endpoints, sharing one engine and the admission bounds."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_name: str,
        admission: Admission,
        max_concurrency: int,
        max_upload_bytes: int,
        max_audio_s: float,
        body_timeout_s: float,
        metrics: ServerMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self._engine = engine
        self._model_name = model_name
        self._admission = admission
        self._inference = asyncio.Semaphore(max_concurrency)
        self._max_upload_bytes = max_upload_bytes
        self._max_samples = int(max_audio_s * SAMPLE_RATE_HZ)
        self._body_timeout_s = body_timeout_s
        self._metrics = metrics
        self._tracer = tracer

    async def health(self, request: Request) -> Response:
        info = self._engine.info
        return JSONResponse(
            {"status": "ok", "model": self._model_name, "engine": info.name, "device": info.device}
        )

    async def metrics(self, request: Request) -> Response:
        body = generate_latest(self._metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        model = {"id": self._model_name, "object": "model", "owned_by": "stt-streaming"}
        return JSONResponse({"object": "list", "data": [model]})

    async def transcribe(self, request: Request) -> Response:
        # Cheap refusals first, before a byte of the body is read.
        check_headers(request, self._max_upload_bytes)
        self._admission.check_queue()
        with self._admission.upload():
            form = await read_form(
                request, max_upload_bytes=self._max_upload_bytes, timeout_s=self._body_timeout_s
            )
        try:
            wanted = transcription(form)
            with self._admission.queue():
                async with self._inference:
                    transcript = await self._infer(wanted)
        finally:
            await form.close()
        return _answer(wanted, transcript)

    async def _infer(self, wanted: Transcription) -> Transcript:
        """Decode and transcribe, in the `whisper.inference` span (under the request's)."""
        with self._tracer.start_as_current_span("whisper.inference") as span:
            # Decoded here, in the slot: decoded audio is what takes memory.
            audio = await asyncio.to_thread(decode_upload, wanted.upload.file, self._max_samples)
            transcript = await self._run_engine(audio, wanted.options)
            span.set_attribute("stt.audio_s", round(transcript.audio_s, 3))
            span.set_attribute("stt.inference_s", round(transcript.inference_s, 4))
            span.set_attribute("stt.model", self._engine.info.model)
        self._metrics.inference_seconds.observe(transcript.inference_s)
        self._metrics.audio_seconds.inc(transcript.audio_s)
        return transcript

    async def _run_engine(self, audio: Audio, options: DecodeOptions) -> Transcript:
        try:
            return await self._engine.transcribe(audio, options)
        except SttError as exc:
            logger.error("transcription failed: %s", exc, exc_info=exc)
            raise RequestError(
                500, f"Transcription failed: {exc}", code=exc.code, kind="server_error"
            ) from exc


def _answer(wanted: Transcription, transcript: Transcript) -> Response:
    headers = {INFERENCE_TIME_HEADER: f"{transcript.inference_s * 1000:.1f}"}
    match wanted.response_format:
        case "text":
            return PlainTextResponse(transcript.text, headers=headers)
        case "srt":
            return PlainTextResponse(srt(transcript), headers=headers)
        case "vtt":
            return Response(vtt(transcript), media_type="text/vtt", headers=headers)
        case "verbose_json":
            body = verbose_json(transcript, words="word" in wanted.granularities)
            return JSONResponse(body, headers=headers)
    return JSONResponse({"text": transcript.text}, headers=headers)
