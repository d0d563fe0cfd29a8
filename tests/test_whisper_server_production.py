"""The whisper-server as production runs it, over real HTTP on 127.0.0.1 with real tiny.en:
word and segment timestamps, `srt` and `vtt` through the official `openai` client, the API
key, `/metrics`, and one trace from a publisher through a real worker into the server."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import msgpack
import openai
import pytest
from faster_whisper import WhisperModel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from stt_worker import __version__
from stt_worker.engines.base import (
    Audio,
    DecodeOptions,
    EngineInfo,
    LocalEngine,
    Segment,
    Transcript,
    Word,
)
from stt_worker.engines.http import HttpEngine
from stt_worker.engines.models import resolve_model_path
from stt_worker.runtime.publisher import read_wav
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.whisper_server import create_app
from tests.asgi_server import serving
from tests.helpers import SPEECH_DIR, Inbox

API_KEY = "sk-production-test-41c9"
COMMIT = "0123abcd"
JFK = SPEECH_DIR / "jfk.wav"  # 11 s: "And so my fellow Americans, ask not what your country..."
TIMESTAMP = r"(\d{2}):(\d{2}):(\d{2})[,.](\d{3})"


class AlignedWhisper(LocalEngine):
    """tiny.en through faster-whisper's own `transcribe`, which aligns words and cuts
    timestamped segments: real words and times for the server's formats to carry."""

    def __init__(self) -> None:
        super().__init__()
        path = str(resolve_model_path("tiny.en"))
        self._model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=2)
        self.info = EngineInfo(name="faster-whisper-aligned", model="tiny.en", device="cpu")
        self.asked_for_words: list[bool] = []

    def _decode(self, audio: Audio, options: DecodeOptions) -> Transcript:
        self.asked_for_words.append(options.word_timestamps)
        found, info = self._model.transcribe(
            audio, language="en", beam_size=1, word_timestamps=options.word_timestamps
        )
        segments = list(found)
        return Transcript(
            text=" ".join(segment.text.strip() for segment in segments),
            segments=tuple(
                Segment(s.start, s.end, s.text.strip(), s.avg_logprob, s.no_speech_prob)
                for s in segments
            ),
            language=info.language,
            words=tuple(
                Word(w.word, w.start, w.end, w.probability)
                for segment in segments
                for w in segment.words or ()
            ),
        )


@pytest.fixture(scope="module")
def aligned() -> Iterator[AlignedWhisper]:
    engine = AlignedWhisper()
    yield engine
    engine.close()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def server(aligned: AlignedWhisper, spans: InMemorySpanExporter) -> AsyncIterator[str]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = create_app(
        aligned,
        model_name="tiny.en",
        max_concurrency=1,
        max_queue=8,
        max_upload_bytes=25 * 1024 * 1024,
        api_key=API_KEY,
        tracer=provider.get_tracer("test"),
        commit=COMMIT,
    )
    async with serving(app, access_log=False) as url:
        yield url


def openai_client(url: str, api_key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


async def transcribe(url: str, **fields: object) -> object:
    async with openai_client(url) as client:
        return await client.audio.transcriptions.create(
            model="whisper-1", file=("jfk.wav", JFK.read_bytes(), "audio/wav"), **fields
        )


def seconds(match: tuple[str, ...]) -> float:
    hours, minutes, whole, ms = (int(part) for part in match)
    return hours * 3600 + minutes * 60 + whole + ms / 1000


def normalized(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


# ---------------------------------------------------------------- timestamps and formats


async def test_the_openai_client_gets_words_and_segments(
    server: str, aligned: AlignedWhisper
) -> None:
    aligned.asked_for_words.clear()  # the warm-up's
    result = await transcribe(
        server, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert "ask not what your country can do for you" in normalized(result.text)
    assert result.words is not None and result.segments is not None and len(result.segments) >= 2
    assert normalized(" ".join(word.word for word in result.words)) == normalized(result.text)
    for word in result.words:
        assert 0 <= word.start <= word.end <= result.duration + 0.05, word
    starts = [word.start for word in result.words]
    assert starts == sorted(starts) and starts[-1] > 7  # spread over the clip, not bunched
    # Each segment's words lie within it.
    for segment in result.segments:
        inside = [w for w in result.words if segment.start <= w.start < segment.end]
        assert normalized(" ".join(w.word for w in inside)) == normalized(segment.text)
    assert aligned.asked_for_words == [True]

    # Without `word` the engine is not asked to align (it costs decode time), and no words.
    plain = await transcribe(server, response_format="verbose_json")
    assert plain.words is None and plain.segments
    assert aligned.asked_for_words == [True, False]


def cues(body: str, decimal_mark: str) -> list[tuple[str | None, float, float, str]]:
    """(number, start, end, text) of each cue; asserts the layout on the way."""
    assert body.endswith("\n\n")
    found = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        number = lines.pop(0) if decimal_mark == "," else None
        times = re.fullmatch(f"{TIMESTAMP} --> {TIMESTAMP}", lines[0])
        assert times is not None, lines[0]
        assert decimal_mark in lines[0] and ("." if decimal_mark == "," else ",") not in lines[0]
        start, end = seconds(times.groups()[:4]), seconds(times.groups()[4:])
        assert len(lines) == 2 and lines[1].strip(), block
        found.append((number, start, end, lines[1]))
    return found


async def test_srt_and_vtt_are_numbered_timed_cues(server: str) -> None:
    verbose = await transcribe(server, response_format="verbose_json")
    srt = await transcribe(server, response_format="srt")
    vtt = await transcribe(server, response_format="vtt")
    assert isinstance(srt, str) and isinstance(vtt, str)

    srt_cues = cues(srt, ",")
    assert [number for number, *_ in srt_cues] == [str(n) for n in range(1, len(srt_cues) + 1)]
    assert vtt.startswith("WEBVTT\n\n")
    vtt_cues = cues(vtt.removeprefix("WEBVTT\n\n"), ".")
    # One cue per segment, at the segment's times, in order.
    expected = [(s.start, s.end, s.text.strip()) for s in verbose.segments]
    assert len(expected) >= 2
    for found in (srt_cues, vtt_cues):
        assert [(start, end, text) for _, start, end, text in found] == [
            (pytest.approx(start, abs=0.001), pytest.approx(end, abs=0.001), text)
            for start, end, text in expected
        ]
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(found))


async def test_bad_granularities_get_openai_errors(server: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await transcribe(server, response_format="srt", timestamp_granularities=["word"])
    assert refused.value.code == "unsupported_timestamp_granularity"
    assert refused.value.param == "timestamp_granularities[]"
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        response = await http.post(
            "/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            data={"response_format": "verbose_json", "timestamp_granularities[]": "sentence"},
            files={"file": ("jfk.wav", JFK.read_bytes(), "audio/wav")},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_timestamp_granularity"


# ---------------------------------------------------------------- key and metrics


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_key_guards_transcriptions_and_metrics_count_every_answer(server: str) -> None:
    async with openai_client(server, api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.audio.transcriptions.create(
                model="whisper-1", file=("jfk.wav", JFK.read_bytes(), "audio/wav")
            )
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    assert (await transcribe(server)).text
    async with httpx.AsyncClient(base_url=server) as http:
        assert (await http.get("/wp-login.php")).status_code == 401  # a scanner, no key
        assert (await http.get("/health")).status_code == 200  # open: probes carry no key
        scraped = await http.get("/metrics")  # open: scrapers carry no key
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    values = samples_of(scraped.text)

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    assert value("stt_whisper_server_build_info", version=__version__, commit=COMMIT) == 1
    assert (value("process_cpu_seconds_total") or 0) > 0
    assert (value("process_resident_memory_bytes") or 0) > 0
    assert any(name == "python_info" for name, _ in values)
    transcriptions = {"route": "/v1/audio/transcriptions", "method": "POST"}
    assert value("stt_whisper_server_requests_total", **transcriptions, status="200") == 1
    assert value("stt_whisper_server_requests_total", **transcriptions, status="401") == 1
    assert value("stt_whisper_server_requests_total", route="other", method="GET", status="401")
    assert value("stt_whisper_server_requests_total", route="/health", method="GET", status="200")
    latency = value(
        "stt_whisper_server_request_duration_seconds_count", **transcriptions, status="200"
    )
    assert latency == 1
    assert value("stt_whisper_server_inference_duration_seconds_count") == 1
    assert (value("stt_whisper_server_inference_duration_seconds_sum") or 0) > 0
    assert value("stt_whisper_server_audio_seconds_total") == pytest.approx(11.0, abs=0.1)
    assert value("stt_whisper_server_queued") == 0
    assert "wp-login" not in scraped.text  # unknown paths do not become series
    assert API_KEY not in scraped.text


# ---------------------------------------------------------------- one trace


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_one_trace_runs_from_the_publisher_through_the_worker_into_the_server(
    server: str, spans: InMemorySpanExporter, make_worker, nc
) -> None:
    worker_spans = InMemorySpanExporter()
    worker_provider = TracerProvider()
    worker_provider.add_span_processor(SimpleSpanProcessor(worker_spans))
    await make_worker(
        engine_factory=HttpEngine,
        telemetry=Telemetry(tracer=worker_provider.get_tracer("worker")),
        whisper_url=server,
        whisper_api_key=API_KEY,
        partial_interval_ms=60_000,
    )
    session = f"trace-{uuid.uuid4().hex[:8]}"
    trace_id, publisher_span = os.urandom(16).hex(), os.urandom(8).hex()
    headers = {"traceparent": f"00-{trace_id}-{publisher_span}-01"}
    inbox = await Inbox.open(nc, session)
    samples, rate = read_wav(SPEECH_DIR / "lj_LJ001-0008.wav")
    subject = f"ai.voice.stream.{session}"
    start = {"type": "start", "sample_rate": rate}
    await nc.publish(subject, msgpack.packb(start), headers=headers)
    pcm = samples.astype("<i2").tobytes()
    for offset in range(0, len(pcm), rate * 2 // 50):
        chunk = {"type": "chunk", "audio": pcm[offset : offset + rate * 2 // 50]}
        await nc.publish(subject, msgpack.packb(chunk), headers=headers)
    await nc.publish(subject, msgpack.packb({"type": "end"}), headers=headers)
    messages = await inbox.until_closed(within_s=60)
    finals = [m["transcript"] for m in messages if m.get("is_final")]
    assert any("surpassed" in final.lower() for final in finals), messages

    (utterance,) = named(worker_spans.get_finished_spans(), "stt.utterance")
    assert format(utterance.context.trace_id, "032x") == trace_id
    requests = named(spans.get_finished_spans(), "POST /v1/audio/transcriptions")
    assert requests, [span.name for span in spans.get_finished_spans()]
    for request in requests:
        # The server's span continues the worker's: same trace, the utterance as its parent.
        assert request.kind is SpanKind.SERVER
        assert format(request.context.trace_id, "032x") == trace_id
        assert request.parent is not None and request.parent.is_remote
        assert request.parent.span_id == utterance.context.span_id
        assert request.attributes["http.response.status_code"] == 200
    inferences = named(spans.get_finished_spans(), "whisper.inference")
    assert {span.parent.span_id for span in inferences} == {
        request.context.span_id for request in requests
    }
