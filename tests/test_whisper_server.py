"""The OpenAI-compatible Whisper server over real HTTP on 127.0.0.1, with the real tiny.en."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soxr
from starlette.applications import Starlette

from stt_worker.core.errors import EngineError
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript
from stt_worker.whisper_server import INFERENCE_TIME_HEADER, TRANSCRIPTIONS_PATH, create_app
from tests.asgi_server import serving
from tests.helpers import REPO, SPEECH_DIR, manifest_text
from tests.textnorm import wer

CLIP = "jfk.wav"
MAX_WER = 0.15


def make_app(
    engine: Engine,
    *,
    max_concurrency: int = 1,
    max_queue: int = 8,
    max_upload_bytes: int = 25 * 1024 * 1024,
    max_audio_s: float = 1800.0,
) -> Starlette:
    return create_app(
        engine,
        model_name="tiny.en",
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_upload_bytes=max_upload_bytes,
        max_audio_s=max_audio_s,
    )


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_app(engine)) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        yield c


def clip_bytes(name: str = CLIP) -> bytes:
    return (SPEECH_DIR / name).read_bytes()


def clip_pcm16(name: str = CLIP) -> np.ndarray:
    with wave.open(str(SPEECH_DIR / name)) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16_000, 1)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def wav_bytes(frames: np.ndarray, sample_rate_hz: int) -> bytes:
    """A PCM16 WAV from int16 samples shaped (samples,) or (samples, channels)."""
    frames = frames if frames.ndim == 2 else frames[:, None]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(frames.astype("<i2").tobytes())
    return buffer.getvalue()


def encode_with_av(pcm: np.ndarray, container: str, codec: str, rate_hz: int) -> bytes:
    """16 kHz mono int16 encoded by FFmpeg (PyAV converts rate and sample format)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate_hz, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :].copy(), format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


async def post_audio(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    filename: str = "audio.wav",
    **fields: str,
) -> httpx.Response:
    return await client.post(
        TRANSCRIPTIONS_PATH,
        files={"file": (filename, data, "application/octet-stream")},
        data={"model": "whisper-1", **fields},
    )


def assert_openai_error(
    response: httpx.Response, status: int, *, kind: str = "invalid_request_error"
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---------------------------------------------------------------- metadata


async def test_health_and_models(client: httpx.AsyncClient, engine: Engine) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "model": "tiny.en",
        "engine": engine.info.name,
        "device": engine.info.device,
    }
    models = await client.get("/v1/models")
    assert models.status_code == 200
    assert models.json() == {
        "object": "list",
        "data": [{"id": "tiny.en", "object": "model", "owned_by": "stt-streaming"}],
    }


# ---------------------------------------------------------------- transcription


async def test_wav_transcribes_as_json_with_inference_time(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await post_audio(client, clip_bytes(), temperature="0.4")
    round_trip_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"text"}
    assert wer(manifest_text(CLIP), body["text"]) <= MAX_WER, body["text"]
    inference_ms = float(response.headers[INFERENCE_TIME_HEADER])
    assert 0 < inference_ms < round_trip_ms


async def test_verbose_json_has_openai_shape(client: httpx.AsyncClient) -> None:
    response = await post_audio(client, clip_bytes(), response_format="verbose_json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(11.0, abs=0.05)
    assert wer(manifest_text(CLIP), body["text"]) <= MAX_WER, body["text"]
    segments = body["segments"]
    assert segments
    for index, segment in enumerate(segments):
        assert segment["id"] == index
        assert 0 <= segment["start"] < segment["end"] <= body["duration"] + 0.05
        assert segment["text"].strip()
        assert isinstance(segment["avg_logprob"], float)
        assert 0 <= segment["no_speech_prob"] <= 1
        assert {"seek", "tokens", "temperature", "compression_ratio"} <= set(segment)
    # Whisper's convention: segments carry their leading space and join into the text.
    assert all(segment["text"].startswith(" ") for segment in segments)
    assert "".join(segment["text"] for segment in segments).strip() == body["text"]


async def test_text_format_is_plain_text(client: httpx.AsyncClient) -> None:
    response = await post_audio(client, clip_bytes(), response_format="text", language="en")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert wer(manifest_text(CLIP), response.text) <= MAX_WER, response.text
    assert INFERENCE_TIME_HEADER in response.headers


async def test_44k_stereo_wav_is_downmixed_and_resampled(client: httpx.AsyncClient) -> None:
    mono = clip_pcm16().astype(np.float32)
    upsampled = soxr.resample(mono, 16_000, 44_100)
    # Unequal channels, so a channel-picking bug would show as a quieter or wrong signal.
    stereo = np.stack([upsampled, 0.5 * upsampled], axis=1)
    data = wav_bytes(np.clip(stereo, -32768, 32767).astype(np.int16), 44_100)
    response = await post_audio(client, data, response_format="verbose_json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(11.0, abs=0.05)
    assert wer(manifest_text(CLIP), body["text"]) <= MAX_WER, body["text"]


@pytest.mark.parametrize(
    ("container", "codec", "rate_hz", "filename"),
    [
        ("mp3", "libmp3lame", 16_000, "audio.mp3"),
        ("ogg", "libopus", 48_000, "audio.ogg"),
        ("flac", "flac", 16_000, "audio.flac"),
    ],
)
async def test_compressed_formats_decode_through_ffmpeg(
    client: httpx.AsyncClient, container: str, codec: str, rate_hz: int, filename: str
) -> None:
    data = encode_with_av(clip_pcm16(), container, codec, rate_hz)
    response = await post_audio(client, data, filename=filename)
    assert response.status_code == 200, response.text
    assert wer(manifest_text(CLIP), response.json()["text"]) <= MAX_WER, response.text


# ---------------------------------------------------------------- bad requests


async def test_missing_file_is_400(client: httpx.AsyncClient) -> None:
    # A multipart body with fields only (httpx sends form-urlencoded without a file part).
    response = await client.post(
        TRANSCRIPTIONS_PATH,
        files={"model": (None, "whisper-1")},
    )
    assert assert_openai_error(response, 400)["param"] == "file"


async def test_garbage_bytes_are_400(client: httpx.AsyncClient) -> None:
    response = await post_audio(client, b"this is not audio at all " * 200, filename="x.mp3")
    error = assert_openai_error(response, 400)
    assert error["param"] == "file" and error["code"] == "invalid_audio"


async def test_empty_wav_and_empty_file_are_400(client: httpx.AsyncClient) -> None:
    for data in (wav_bytes(np.zeros(0, dtype=np.int16), 16_000), b""):
        error = assert_openai_error(await post_audio(client, data), 400)
        assert error["code"] == "empty_audio"


async def test_unsupported_response_format_is_400(client: httpx.AsyncClient) -> None:
    response = await post_audio(client, clip_bytes(), response_format="diarized_json")
    assert assert_openai_error(response, 400)["param"] == "response_format"


async def test_unknown_language_is_400(client: httpx.AsyncClient) -> None:
    response = await post_audio(client, clip_bytes(), language="klingon")
    assert assert_openai_error(response, 400)["param"] == "language"


async def test_non_multipart_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(TRANSCRIPTIONS_PATH, json={"file": "jfk.wav"})
    assert_openai_error(response, 415)


async def test_unknown_path_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/audio/translations"), 404)


async def test_oversized_upload_is_413_and_the_server_goes_on(engine: Engine) -> None:
    app = make_app(engine, max_upload_bytes=64 * 1024)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        # Content-Length says it all: refused before the body is read.
        declared = await post_audio(client, clip_bytes())
        assert assert_openai_error(declared, 413)["param"] == "file"

        # Chunked upload, no Content-Length: refused once the body passes the limit.
        request = client.build_request(
            "POST",
            TRANSCRIPTIONS_PATH,
            files={"file": ("audio.wav", clip_bytes(), "audio/wav")},
        )
        body = request.read()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 16 * 1024):
                yield body[start : start + 16 * 1024]

        chunked = await client.post(
            TRANSCRIPTIONS_PATH,
            content=chunks(),
            headers={"content-type": request.headers["content-type"]},
        )
        assert assert_openai_error(chunked, 413)["code"] == "file_too_large"

        small = wav_bytes(clip_pcm16()[: 16_000 * 2], 16_000)  # 2 s, 64 KB
        assert (await post_audio(client, small)).status_code == 200


async def test_audio_longer_than_the_limit_is_413_whatever_its_size(engine: Engine) -> None:
    """A few KB of low-bitrate Opus can hold hours; the decoded duration is what is bounded."""
    app = make_app(engine, max_audio_s=5.0)
    pcm = clip_pcm16()  # 11 s
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        for data, name in [
            (wav_bytes(pcm, 16_000), "long.wav"),
            (encode_with_av(pcm, "ogg", "libopus", 48_000), "long.ogg"),
        ]:
            too_long = await post_audio(client, data, filename=name)
            assert assert_openai_error(too_long, 413)["code"] == "audio_too_long"
        short = encode_with_av(pcm[: 16_000 * 4], "ogg", "libopus", 48_000)
        assert (await post_audio(client, short, filename="short.ogg")).status_code == 200


# ---------------------------------------------------------------- bounds and failures


class GatedEngine(Engine):
    """The real engine behind a gate the test opens; counts how many run at once."""

    def __init__(self, inner: Engine) -> None:
        self.info = inner.info
        self._inner = inner
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.active = 0
        self.max_active = 0

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            await self.gate.wait()
            return await self._inner.transcribe(audio, options)
        finally:
            self.active -= 1


async def test_overload_is_503_with_retry_after_and_the_server_recovers(engine: Engine) -> None:
    gated = GatedEngine(engine)
    app = make_app(gated, max_concurrency=1, max_queue=0)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        first = asyncio.create_task(post_audio(client, clip_bytes()))
        await asyncio.wait_for(gated.entered.wait(), 30)

        refused = await asyncio.gather(*(post_audio(client, clip_bytes()) for _ in range(4)))
        for response in refused:
            error = assert_openai_error(response, 503, kind="server_error")
            assert error["code"] == "overloaded"
            assert response.headers["retry-after"] == "1"
        assert (await client.get("/health")).status_code == 200

        gated.gate.set()
        assert (await first).status_code == 200
        later = await post_audio(client, clip_bytes())
        assert later.status_code == 200
        assert wer(manifest_text(CLIP), later.json()["text"]) <= MAX_WER
    assert gated.max_active == 1


async def test_queue_holds_max_queue_requests_beyond_the_running_one(engine: Engine) -> None:
    gated = GatedEngine(engine)
    app = make_app(gated, max_concurrency=1, max_queue=2)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        first = asyncio.create_task(post_audio(client, clip_bytes()))
        await asyncio.wait_for(gated.entered.wait(), 30)
        others = [asyncio.create_task(post_audio(client, clip_bytes())) for _ in range(4)]
        # The gate is shut, so only refusals can finish: exactly 4 - max_queue of them.
        async with asyncio.timeout(30):
            while sum(task.done() for task in others) < 2:
                await asyncio.wait(
                    [task for task in others if not task.done()],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finished = [task.result() for task in others if task.done()]
        assert [response.status_code for response in finished] == [503, 503]

        gated.gate.set()
        answered = await asyncio.gather(first, *(task for task in others if not task.done()))
        assert [response.status_code for response in answered] == [200, 200, 200]
    assert gated.max_active == 1


async def test_concurrent_burst_on_the_real_engine_sheds_load(engine: Engine) -> None:
    app = make_app(engine, max_concurrency=1, max_queue=0)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(*(post_audio(client, clip_bytes()) for _ in range(5)))
        statuses = sorted(response.status_code for response in responses)
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) == {200, 503}
        assert (await post_audio(client, clip_bytes())).status_code == 200


class FailingEngine(Engine):
    def __init__(self, inner: Engine) -> None:
        self.info = inner.info

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        raise EngineError("the GPU caught fire")


async def test_engine_failure_is_500_with_the_error_shape(engine: Engine) -> None:
    async with (
        serving(make_app(FailingEngine(engine))) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        response = await post_audio(client, clip_bytes())
        error = assert_openai_error(response, 500, kind="server_error")
        assert error["code"] == "engine_error"
        assert (await client.get("/health")).status_code == 200


# ---------------------------------------------------------------- the CLI process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_cli_whisper_server_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "whisper-server.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stt_worker.tools.cli",
            "whisper-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            "tiny.en",
            cwd=REPO,
            env={**os.environ, "STT_LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with asyncio.timeout(120):
                while True:
                    assert process.returncode is None, log_path.read_text()
                    try:
                        health = await client.get("/health", timeout=1)
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)  # not listening yet: model load, warm-up
            assert health.json()["model"] == "tiny.en"
            response = await post_audio(client, clip_bytes())
            assert response.status_code == 200, response.text
            assert wer(manifest_text(CLIP), response.json()["text"]) <= MAX_WER
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, log_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "whisper server ready" in log_path.read_text()
