"""The HTTP engine's side of word timestamps and translation, against a real local server
that speaks the OpenAI API's shape (verbose_json with ``words``, the translations route)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions
from stt_worker.engines.http import HttpEngine
from stt_worker.runtime.asgi import serving_in_loop

SECOND = np.full(16_000, 0.1, dtype=np.float32)
BODY = {
    "text": " Hello there. Thanks for watching!",
    "language": "english",
    "segments": [
        {"start": 0.0, "end": 1.0, "text": " Hello there.", "avg_logprob": -0.2,
         "no_speech_prob": 0.01},
        # Whisper's silence rule drops it, and so its words.
        {"start": 1.0, "end": 2.0, "text": " Thanks for watching!", "avg_logprob": -1.4,
         "no_speech_prob": 0.9},
    ],
    "words": [
        {"word": " Hello", "start": 0.1, "end": 0.4, "probability": 0.97},
        {"word": " there.", "start": 0.4, "end": 0.8},  # OpenAI's own words carry none
        {"word": " Thanks", "start": 1.1, "end": 1.3},
    ],
}  # fmt: skip


class Backend:
    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/audio/transcriptions", self._answer, methods=["POST"]),
                Route("/v1/audio/translations", self._answer, methods=["POST"]),
            ]
        )

    async def _answer(self, request: Request) -> JSONResponse:
        form = await request.form()
        fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        self.requests.append((request.url.path, fields))
        return JSONResponse(BODY)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Backend, HttpEngine]]:
    backend = Backend()
    async with serving_in_loop(backend.app, lifespan="off", access_log=False) as url:
        settings = load_settings(
            whisper_url=url, whisper_api_key=None, whisper_http_response_format="json"
        )
        engine = HttpEngine(settings)
        yield backend, engine
        await engine.aclose()


async def test_word_timestamps_ask_for_words_in_verbose_json(served):
    backend, engine = served
    result = await engine.transcribe(SECOND, DecodeOptions(language="en", word_timestamps=True))
    path, fields = backend.requests[0]
    assert path == "/v1/audio/transcriptions"
    assert ("response_format", "verbose_json") in fields
    granularities = [v for k, v in fields if k == "timestamp_granularities[]"]
    assert granularities == ["word", "segment"]
    assert result.text == "Hello there."
    assert [(w.word, w.start_s, w.end_s, w.probability) for w in result.words] == [
        (" Hello", 0.1, 0.4, 0.97),
        (" there.", 0.4, 0.8, None),
    ]


async def test_without_word_timestamps_the_configured_format_is_asked(served):
    backend, engine = served
    await engine.transcribe(SECOND, DecodeOptions())
    _, fields = backend.requests[0]
    assert dict(fields)["response_format"] == "json"
    assert "timestamp_granularities[]" not in dict(fields)


async def test_translate_goes_to_the_translations_route_without_a_language(served):
    backend, engine = served
    await engine.transcribe(SECOND, DecodeOptions(language="de", task="translate"))
    path, fields = backend.requests[0]
    assert path == "/v1/audio/translations"
    assert "language" not in dict(fields)
