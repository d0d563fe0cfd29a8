"""Tests of the HTTP engine against real, scripted, misbehaving servers on 127.0.0.1.

Each test starts a starlette app under uvicorn on port 0, in the test's own event loop, whose
answer to each request comes from a script (the last step repeats). The server records what
it received, so the tests can check the form, the WAV and the headers as the server saw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stt_worker.config import load_settings
from stt_worker.core.errors import EngineError
from stt_worker.engines.base import DecodeOptions, Engine
from stt_worker.engines.http import HttpEngine, parse_retry_after
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.whisper_server import app_for
from tests.helpers import SPEECH_DIR, manifest_text
from tests.textnorm import wer

API_KEY = "sk-test-DO-NOT-LEAK-5f3a9c"
SECOND = np.zeros(16_000, dtype=np.float32)

VERBOSE = {
    "task": "transcribe",
    "language": "english",
    "duration": 3.0,
    "text": " Hello there. Thanks for watching! General Kenobi.",
    "segments": [
        {"start": 0.0, "end": 1.0, "text": " Hello there.", "avg_logprob": -0.2,
         "no_speech_prob": 0.01},
        # Whisper's silence rule: no_speech_prob > 0.6 and avg_logprob < -1.0.
        {"start": 1.0, "end": 2.0, "text": " Thanks for watching!", "avg_logprob": -1.4,
         "no_speech_prob": 0.9},
        {"start": 2.0, "end": 3.0, "text": " General Kenobi.", "avg_logprob": -0.3,
         "no_speech_prob": 0.05},
    ],
}  # fmt: skip


# --- the scripted server ---


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: object = field(default_factory=lambda: {"text": "ok"})
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        if isinstance(self.body, str):
            return PlainTextResponse(self.body, self.status, self.headers)
        return JSONResponse(self.body, self.status, self.headers)


@dataclass(frozen=True)
class Hang:
    """Never answer (until the test ends)."""


@dataclass(frozen=True)
class Work:
    """Answer after `seconds` of simulated work: lets concurrent requests overlap."""

    seconds: float
    reply: Reply = field(default_factory=Reply)


Step = Reply | Hang | Work


@dataclass(frozen=True)
class Received:
    at_s: float
    headers: dict[str, str]
    form: dict[str, str]
    filename: str | None
    content_type: str | None
    samples: np.ndarray
    sample_rate_hz: int
    channels: int
    sample_width: int


class ScriptedServer:
    def __init__(self, steps: tuple[Step, ...]) -> None:
        self.steps = list(steps)
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.health_status = 200
        self.release = asyncio.Event()
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _health(self, request: Request) -> Response:
        return PlainTextResponse("ok", self.health_status)

    async def _transcribe(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._record(request)
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            if isinstance(step, Hang):
                await self.release.wait()
                return PlainTextResponse("too late", 504)
            if isinstance(step, Work):
                await asyncio.sleep(step.seconds)
                step = step.reply
            return step.response()
        finally:
            self.in_flight -= 1

    async def _record(self, request: Request) -> None:
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        with wave.open(io.BytesIO(await upload.read())) as wav:
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        self.received.append(
            Received(
                at_s=time.monotonic(),
                headers=dict(request.headers),
                form={k: v for k, v in form.items() if isinstance(v, str)},
                filename=upload.filename,
                content_type=upload.content_type,
                samples=samples,
                sample_rate_hz=rate,
                channels=channels,
                sample_width=width,
            )
        )


class _Uvicorn(uvicorn.Server):
    """uvicorn that signals an event once it listens, so tests wait on it, not on a sleep."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


StartServer = Callable[..., Awaitable[ScriptedServer]]
MakeEngine = Callable[..., HttpEngine]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(*steps: Step) -> ScriptedServer:
            scripted = ScriptedServer(steps or (Reply(),))
            config = uvicorn.Config(
                scripted.app, host="127.0.0.1", port=0, log_level="warning", log_config=None,
                lifespan="off",
            )  # fmt: skip
            server = _Uvicorn(config)
            task = asyncio.create_task(server.serve())
            ready = asyncio.create_task(server.ready.wait())
            await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert server.started, "uvicorn did not start"
            scripted.port = server.servers[0].sockets[0].getsockname()[1]

            async def stop() -> None:
                scripted.release.set()  # let hanging handlers finish, so shutdown is quick
                server.should_exit = True
                await asyncio.wait_for(task, 10)

            stack.push_async_callback(stop)
            return scripted

        yield start


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[HttpEngine] = []

    def make(url: str, **overrides: object) -> HttpEngine:
        settings = {
            "whisper_url": url,
            "whisper_api_key": None,
            "whisper_language": None,
            "whisper_http_timeout_s": 0.5,
            "whisper_http_connect_timeout_s": 0.5,
            "whisper_http_retries": 2,
            "whisper_http_backoff_s": 0.01,
            "whisper_http_max_backoff_s": 0.05,
            **overrides,
        }
        engine = HttpEngine(load_settings(**settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A port bound but not listening: connections are refused, and nobody can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def failure(engine: HttpEngine, audio: np.ndarray = SECOND) -> EngineError:
    with pytest.raises(EngineError) as caught:
        await engine.transcribe(audio, DecodeOptions())
    return caught.value


# --- success paths ---


async def test_request_carries_form_fields_and_the_wav(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Reply(body=VERBOSE))
    engine = make_engine(server.url, whisper_http_model="large-v3")
    pcm = np.random.default_rng(7).integers(-32768, 32768, 24_000, dtype=np.int16)
    pcm[:2] = [-32768, 32767]  # both extremes survive the float round trip
    audio = pcm.astype(np.float32) / 32768.0

    await engine.transcribe(audio, DecodeOptions(language="en", prompt="Earlier words."))

    (received,) = server.received
    assert received.form == {
        "model": "large-v3",
        "response_format": "verbose_json",
        "language": "en",
        "prompt": "Earlier words.",
    }
    assert (received.filename, received.content_type) == ("audio.wav", "audio/wav")
    assert (received.sample_rate_hz, received.channels, received.sample_width) == (16_000, 1, 2)
    np.testing.assert_array_equal(received.samples, pcm)


async def test_optional_fields_are_left_out(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve(Reply(body={"text": "hi"}))
    await make_engine(server.url).transcribe(SECOND, DecodeOptions())
    assert set(server.received[0].form) == {"model", "response_format"}


async def test_verbose_json_keeps_speech_and_drops_silence(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Reply(body=VERBOSE))
    result = await make_engine(server.url).transcribe(SECOND, DecodeOptions())

    assert result.text == "Hello there. General Kenobi."
    assert [s.text for s in result.segments] == ["Hello there.", "General Kenobi."]
    assert (result.segments[1].start_s, result.segments[1].end_s) == (2.0, 3.0)
    assert result.segments[0].avg_logprob == pytest.approx(-0.2)
    assert result.language == "en"  # verbose_json says "english"
    assert result.no_speech_prob == pytest.approx(0.01)
    assert result.audio_s == pytest.approx(1.0)
    assert result.inference_s > 0


async def test_all_silence_publishes_no_text(serve: StartServer, make_engine: MakeEngine) -> None:
    silent = {
        "text": " Thanks for watching!",
        "language": "en",
        "segments": [
            {"start": 0, "end": 1, "text": " Thanks for watching!", "avg_logprob": -1.2,
             "no_speech_prob": 0.95},
        ],
    }  # fmt: skip
    server = await serve(Reply(body=silent))
    result = await make_engine(server.url).transcribe(SECOND, DecodeOptions())
    assert (result.text, result.segments) == ("", ())
    assert result.no_speech_prob == pytest.approx(0.95)


async def test_json_format(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve(Reply(body={"text": " Just the text. "}))
    engine = make_engine(server.url, whisper_http_response_format="json", whisper_language="de")
    result = await engine.transcribe(SECOND, DecodeOptions())
    assert (result.text, result.segments, result.no_speech_prob) == ("Just the text.", (), 0.0)
    assert result.language == "de"  # the configured language, since json does not say
    assert server.received[0].form["response_format"] == "json"
    assert server.received[0].form["language"] == "de"


async def test_text_format(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve(Reply(body=" Plain words.\n"))
    engine = make_engine(server.url, whisper_http_response_format="text")
    result = await engine.transcribe(SECOND, DecodeOptions())
    assert result.text == "Plain words."
    assert server.received[0].form["response_format"] == "text"


# --- authentication and secrets ---


async def test_bearer_key_is_sent_and_never_leaks(
    serve: StartServer, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # The 401 body echoes the key, as OpenAI's "Incorrect API key provided: sk-..." does.
    server = await serve(
        Reply(503), Reply(401, {"error": f"Incorrect API key provided: {API_KEY}"})
    )
    engine = make_engine(f"http://user:hunter2@127.0.0.1:{server.port}", whisper_api_key=API_KEY)

    error = await failure(engine)

    assert [r.headers.get("authorization") for r in server.received] == [f"Bearer {API_KEY}"] * 2
    assert error.code == "backend_rejected"
    assert "401" in str(error) and "[redacted]" in str(error)
    assert "retry 1 of 2" in caplog.text  # the retry was logged...
    for text in (str(error), repr(error.__cause__), caplog.text, repr(engine), str(engine.info)):
        assert API_KEY not in text  # ...and nothing shows the key
        assert "hunter2" not in text


async def test_no_authorization_header_without_a_key(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Reply())
    await make_engine(server.url).transcribe(SECOND, DecodeOptions())
    assert "authorization" not in server.received[0].headers


# --- retries ---


async def test_503_twice_then_success(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve(Reply(503), Reply(503), Reply(body={"text": "third time"}))
    engine = make_engine(server.url)
    result = await engine.transcribe(SECOND, DecodeOptions())
    assert result.text == "third time"
    assert len(server.received) == 3
    assert engine.consecutive_failures == 0


async def test_retry_after_is_honoured(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve(Reply(429, {"error": "slow down"}, {"Retry-After": "1"}), Reply())
    engine = make_engine(server.url, whisper_http_max_backoff_s=2.0)
    result = await engine.transcribe(SECOND, DecodeOptions())
    assert result.text == "ok"
    first, second = server.received
    assert second.at_s - first.at_s >= 0.95


async def test_retry_after_beyond_the_cap_gives_up_at_once(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Reply(503, "maintenance", {"Retry-After": "120"}), Reply())
    error = await failure(make_engine(server.url))
    assert error.code == "backend_unavailable"
    assert "Retry-After 120.0 s" in str(error) and "1 attempt" in str(error)
    assert len(server.received) == 1


async def test_hanging_server_times_out_then_gives_up(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Hang())
    engine = make_engine(server.url, whisper_http_timeout_s=0.2, whisper_http_retries=1)
    started = time.monotonic()
    error = await failure(engine)
    assert error.code == "backend_unavailable"
    assert "ReadTimeout" in str(error) and "2 attempts" in str(error)
    assert len(server.received) == 2
    assert time.monotonic() - started < 2


async def test_connection_refused_gives_up_quickly(dead_url: str, make_engine: MakeEngine) -> None:
    started = time.monotonic()
    error = await failure(make_engine(dead_url, whisper_http_retries=3))
    assert error.code == "backend_unavailable"
    assert "ConnectError" in str(error) and "gave up after 4 attempts" in str(error)
    assert dead_url in str(error)
    assert time.monotonic() - started < 2


async def test_dropped_connection_is_retried(make_engine: MakeEngine) -> None:
    requests = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await reader.readexactly(length)  # the whole request, so the client waits to read
        writer.close()  # and then no response at all
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        error = await failure(make_engine(f"http://127.0.0.1:{port}", whisper_http_retries=1))
    assert error.code == "backend_unavailable"
    assert "RemoteProtocolError" in str(error)
    assert requests == 2


@pytest.mark.parametrize(
    ("reply", "code", "expected"),
    [
        (Reply(body="{not json"), "backend_bad_response", "not JSON: {not json"),
        (Reply(body={"txt": "typo"}), "backend_bad_response", "no string 'text'"),
        (Reply(body={"text": "x", "segments": [{"start": 0}]}), "backend_bad_response", "segment"),
        (Reply(400, {"error": "unsupported file"}), "backend_rejected", "HTTP 400 Bad Request"),
        (Reply(413, "too big"), "backend_rejected", "HTTP 413"),
        # Not retried by design: 500 is as often a bad input as overload (see the module).
        (Reply(500, "Internal Server Error"), "backend_rejected", "HTTP 500"),
    ],
    ids=["garbage-json", "no-text", "bad-segment", "400", "413", "500"],
)
async def test_permanent_failures_are_not_retried(
    serve: StartServer, make_engine: MakeEngine, reply: Reply, code: str, expected: str
) -> None:
    server = await serve(reply, Reply())
    # "text" format would accept any body, so the garbage cases need a JSON format.
    error = await failure(make_engine(server.url))
    assert error.code == code
    assert expected in str(error)
    assert "1 attempt, not retried" in str(error)
    assert len(server.received) == 1


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 < (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


# --- health, readiness, concurrency ---


async def test_unhealthy_after_consecutive_failures_until_a_success(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Reply(502), Reply(502), Reply(502), Reply())
    engine = make_engine(server.url, whisper_http_retries=0)
    assert engine.healthy

    await failure(engine)
    assert (engine.consecutive_failures, engine.healthy) == (1, True)
    await failure(engine)
    assert (engine.consecutive_failures, engine.healthy) == (2, False)
    await failure(engine)
    assert engine.consecutive_failures == 3

    await engine.transcribe(SECOND, DecodeOptions())
    assert (engine.consecutive_failures, engine.healthy) == (0, True)


async def test_concurrent_requests_stay_within_the_bound(
    serve: StartServer, make_engine: MakeEngine
) -> None:
    server = await serve(Work(0.05))
    engine = make_engine(server.url, whisper_http_max_concurrency=3)
    results = await asyncio.gather(*(engine.transcribe(SECOND, DecodeOptions()) for _ in range(10)))
    assert [r.text for r in results] == ["ok"] * 10
    assert server.max_in_flight == 3


async def test_check_reports_reachability(
    serve: StartServer, make_engine: MakeEngine, dead_url: str
) -> None:
    server = await serve()
    engine = make_engine(server.url)
    assert await engine.check()
    server.health_status = 503  # up, but says it cannot serve (e.g. loading its model)
    assert not await engine.check()
    server.health_status = 404  # no health route: it answered, so it is reachable
    assert await engine.check()
    assert not await make_engine(dead_url).check()


async def test_warmup_survives_a_dead_backend(
    dead_url: str, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(dead_url)
    with caplog.at_level(logging.WARNING, logger="stt_worker.engines.http"):
        await engine.warmup()
    assert [r.getMessage() for r in caplog.records] == [
        f"Whisper backend {dead_url} is not reachable yet; starting anyway"
    ]


async def test_aclose_then_reuse(serve: StartServer, make_engine: MakeEngine) -> None:
    server = await serve()
    engine = make_engine(server.url)
    await engine.transcribe(SECOND, DecodeOptions())
    await engine.aclose()
    assert (await engine.transcribe(SECOND, DecodeOptions())).text == "ok"


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(EngineError, match="http"):
        HttpEngine(load_settings(whisper_url="ftp://example.com"))
    with pytest.raises(EngineError, match="srt"):
        HttpEngine(load_settings(whisper_http_response_format="srt"))


def test_info_names_the_backend_without_credentials() -> None:
    engine = HttpEngine(
        load_settings(
            whisper_url="https://bob:pw@whisper.example:8443/openai/?key=s3cret",
            whisper_http_model="whisper-large",
            whisper_api_key=API_KEY,
        )
    )
    assert (engine.info.name, engine.info.model) == ("http", "whisper-large")
    assert engine.info.device == "https://whisper.example:8443/openai"
    assert API_KEY not in repr(engine) and "pw" not in repr(engine)


async def test_url_credentials_become_basic_auth_and_stay_out_of_logs(
    serve: StartServer, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await serve(Reply())
    await make_engine(f"http://user:hunter2@127.0.0.1:{server.port}").transcribe(
        SECOND, DecodeOptions()
    )
    assert server.received[0].headers["authorization"] == "Basic dXNlcjpodW50ZXIy"
    assert "HTTP Request: POST" in caplog.text  # httpx logs the URL...
    assert "hunter2" not in caplog.text  # ...but without the credentials


# --- against our own whisper-server and its key ---


async def test_the_shared_key_opens_our_whisper_server(
    make_engine: MakeEngine, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """One `WHISPER_API_KEY` for both: the worker's engine sends what the server requires."""
    caplog.set_level(logging.DEBUG)
    settings = load_settings(whisper_api_key=API_KEY, whisper_server_max_queue=4)
    with wave.open(str(SPEECH_DIR / "jfk.wav")) as wav:
        speech = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2") / 32768.0
    async with serving_in_loop(app_for(settings, engine)) as url:
        keyed = make_engine(url, whisper_api_key=API_KEY, whisper_http_timeout_s=30)
        transcript = await keyed.transcribe(speech.astype(np.float32), DecodeOptions())
        assert wer(manifest_text("jfk.wav"), transcript.text) <= 0.15, transcript.text

        for key in (None, "sk-wrong"):
            error = await failure(make_engine(url, whisper_api_key=key))
            assert error.code == "backend_rejected" and "401" in str(error)
            assert "retry" not in caplog.text  # a refused key is not retried
    assert API_KEY not in caplog.text
