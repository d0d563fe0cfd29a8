"""Each engine behind the real worker, over a real nats-server, on real speech.

- HTTP variant: the worker's HTTP engine against our own OpenAI-compatible Whisper server
  on a real socket, and against a backend that fails;
- torch variant: openai-whisper on PyTorch with weights converted from the bundled model.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stt_worker.engines import create_engine
from stt_worker.runtime.publisher import stream_file
from stt_worker.whisper_server import create_app
from tests.asgi_server import serving
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer

CLIPS = ["ls_1089-134691-0001.wav", "lj_LJ001-0008.wav"]


def sid() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


def final_text(messages: list[dict]) -> str:
    return " ".join(
        m["transcript"] for m in messages if m.get("type") == "transcript" and m["is_final"]
    )


async def transcribe_clips(nc, clips: list[str]) -> dict[str, list[dict]]:
    sessions = {clip: sid() for clip in clips}
    inboxes = {clip: await Inbox.open(nc, session) for clip, session in sessions.items()}
    await asyncio.gather(
        *(stream_file(nc, s, SPEECH_DIR / clip, speed=0) for clip, s in sessions.items())
    )
    return {clip: await inboxes[clip].until_closed(within_s=90) for clip in clips}


async def test_http_variant_against_our_whisper_server(make_worker, nc, engine):
    app = create_app(
        engine, model_name="tiny.en", max_concurrency=1, max_queue=8, max_upload_bytes=1 << 24
    )
    async with serving(app) as url:
        await make_worker(
            engine_factory=lambda settings: create_engine(settings, "http"), whisper_url=url
        )
        results = await transcribe_clips(nc, CLIPS)
    for clip, messages in results.items():
        assert wer(manifest_text(clip), final_text(messages)) <= 0.2, final_text(messages)


def _failing_backend() -> tuple[Starlette, dict[str, int]]:
    """A backend whose model is broken: every request gets a 500 (not retried)."""
    calls = {"count": 0}

    async def transcriptions(request: Request) -> JSONResponse:
        await request.body()
        calls["count"] += 1
        return JSONResponse({"error": {"message": "model crashed"}}, status_code=500)

    return Starlette(
        routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])]
    ), calls


async def test_failing_http_backend_gives_each_session_an_error_and_the_worker_goes_on(
    make_worker, nc
):
    app, calls = _failing_backend()
    async with serving(app) as url:
        worker = await make_worker(
            engine_factory=lambda settings: create_engine(settings, "http"),
            whisper_url=url,
            whisper_http_backoff_s=0.01,
        )
        results = await transcribe_clips(nc, CLIPS)
        for messages in results.values():
            errors = [m for m in messages if m.get("type") == "error"]
            assert errors and all(e["code"] == "backend_rejected" for e in errors)
            assert errors[0]["utterance_id"] >= 1 and "500" in errors[0]["message"]
            assert messages[-1]["type"] == "session_closed"
        assert calls["count"] >= len(CLIPS)
        assert worker.session_count == 0  # every session closed despite the failures


async def test_torch_variant_with_converted_weights(make_worker, nc, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("whisper")
    cache = tmp_path_factory.mktemp("torch-cache")
    await make_worker(
        engine_factory=lambda settings: create_engine(settings, "openai-whisper"),
        whisper_model_cache_dir=str(cache),
    )
    results = await transcribe_clips(nc, CLIPS)
    for clip, messages in results.items():
        assert wer(manifest_text(clip), final_text(messages)) <= 0.2, final_text(messages)
