"""Operations, end to end: traces into a real OTLP/HTTP receiver, HyperDX's authorization,
trace context through NATS headers, /healthz /readyz /metrics, and JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stt_worker import __version__
from stt_worker.config import load_settings
from stt_worker.runtime.publisher import publish_pcm, read_wav
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.telemetry.logs import session_context, setup_logging
from stt_worker.runtime.worker import Worker
from tests.engines import GatedEngine
from tests.helpers import SPEECH_DIR, Inbox
from tests.otlp_receiver import otlp_receiver

CLIP = SPEECH_DIR / "lj_LJ001-0008.wav"  # 1.8 s: "has never been surpassed."


def sid() -> str:
    return f"o-{uuid.uuid4().hex[:10]}"


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def send_clip(nc, session: str, headers: dict[str, str] | None = None) -> None:
    """A publisher that sends the W3C `traceparent` header on every message of the turn."""
    samples, rate = read_wav(CLIP)
    subject = f"ai.voice.stream.{session}"
    start = {"type": "start", "sample_rate": rate, "speaker_id": "spk-7"}
    await nc.publish(subject, msgpack.packb(start), headers=headers)
    pcm = samples.astype("<i2").tobytes()
    step = rate * 2 // 50
    for offset in range(0, len(pcm), step):
        chunk = {"type": "chunk", "audio": pcm[offset : offset + step]}
        await nc.publish(subject, msgpack.packb(chunk), headers=headers)
    await nc.publish(subject, msgpack.packb({"type": "end"}), headers=headers)


async def collect_with_headers(nc, session: str) -> tuple[list, asyncio.Event]:
    received: list[tuple[dict, dict | None]] = []
    closed = asyncio.Event()

    async def on_message(msg) -> None:
        message = msgpack.unpackb(msg.data)
        received.append((message, msg.headers))
        if message.get("type") == "session_closed":
            closed.set()

    await nc.subscribe(f"ai.voice.transcription.{session}", cb=on_message)
    await nc.flush()
    return received, closed


# ---------------------------------------------------------------- traces


async def test_spans_reach_a_real_otlp_receiver_under_the_publishers_trace(
    make_worker, nc, monkeypatch
):
    async with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=stt-streaming-0")
        telemetry = Telemetry.from_settings(load_settings(otel_enabled=True))
        try:
            await make_worker(telemetry=telemetry)
            session = sid()
            header, trace_id, publisher_span = traceparent()
            received, closed = await collect_with_headers(nc, session)
            await send_clip(nc, session, {"traceparent": header})
            await asyncio.wait_for(closed.wait(), 60)

            def complete(spans) -> bool:
                names = {s.name for s in spans}
                return {"stt.session", "stt.utterance"} <= names and any(
                    s.name == "stt.inference" and s.attributes["stt.final"] for s in spans
                )

            await receiver.until(complete)
        finally:
            telemetry.shutdown()

    (final, final_headers) = next(
        (m, h) for m, h in received if m.get("type") == "transcript" and m["is_final"]
    )
    assert "surpassed" in final["transcript"].lower()
    # What we publish continues the publisher's trace: the next hop joins the same turn.
    assert final_headers and final_headers["traceparent"].split("-")[1] == trace_id

    (session_span,) = receiver.named("stt.session")
    assert session_span.trace_id == trace_id
    assert session_span.parent_span_id == publisher_span
    assert session_span.attributes["stt.session_id"] == session
    assert session_span.attributes["stt.speaker_id"] == "spk-7"
    assert session_span.attributes["stt.close_reason"] == "end"
    assert session_span.resource["service.name"] == "stt-streaming"
    assert session_span.resource["k8s.pod.name"] == "stt-streaming-0"

    (utterance,) = receiver.named("stt.utterance")
    assert utterance.trace_id == trace_id
    assert utterance.attributes["stt.end_reason"] == "end"
    assert 1.5 < utterance.attributes["stt.audio_s"] < 2.5
    (inference,) = [s for s in receiver.named("stt.inference") if s.attributes["stt.final"]]
    assert inference.parent_span_id == utterance.span_id
    attributes = inference.attributes
    assert attributes["stt.engine"] == "faster-whisper"
    assert attributes["stt.model"] == "tiny.en"
    assert attributes["stt.device"] == "cpu"
    assert attributes["stt.session_id"] == session and attributes["stt.speaker_id"] == "spk-7"
    assert 0 < attributes["stt.real_time_factor"] < 1
    assert attributes["stt.queue_wait_s"] >= 0
    assert attributes["stt.inference_s"] > 0


async def test_hyperdx_receives_the_key_as_authorization_and_logs_never_show_it(
    make_worker, nc, caplog
):
    key = "hdx-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    async with otlp_receiver() as hyperdx:
        settings = load_settings(
            hyperdx_enabled=True, hyperdx_api_key=key, hyperdx_otlp_endpoint=hyperdx.url
        )
        telemetry = Telemetry.from_settings(settings)
        try:
            await make_worker(telemetry=telemetry)
            session = sid()
            inbox = await Inbox.open(nc, session)
            await send_clip(nc, session)
            await inbox.until_closed(within_s=60)
            await asyncio.to_thread(telemetry.provider.force_flush, 10_000)
            await hyperdx.until(lambda spans: bool(hyperdx.named("stt.session")))
        finally:
            telemetry.shutdown()
    assert hyperdx.authorizations and set(hyperdx.authorizations) == {key}
    assert key not in caplog.text
    assert key not in repr(settings) and key not in str(settings.model_dump())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the socket closes


async def test_an_unreachable_collector_is_logged_once_and_sessions_go_on(
    make_worker, nc, caplog, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    caplog.set_level(logging.INFO)
    telemetry = Telemetry.from_settings(load_settings(otel_enabled=True))
    try:
        await make_worker(telemetry=telemetry)
        for _ in range(3):
            session = sid()
            inbox = await Inbox.open(nc, session)
            await send_clip(nc, session)
            messages = await inbox.until_closed(within_s=60)
            assert any(m.get("is_final") for m in messages)
            # Each flush is a failed export to the dead collector.
            await asyncio.to_thread(telemetry.provider.force_flush, 10_000)
    finally:
        telemetry.shutdown()
    warnings = [r for r in caplog.records if "cannot export traces" in r.getMessage()]
    assert len(warnings) == 1
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


def test_a_dead_collector_cannot_hold_up_the_exit(monkeypatch):
    """Its retry schedule (1 + 2 + 4 + 8 s within a 30 s timeout) is cut short at shutdown."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    telemetry = Telemetry.from_settings(load_settings(otel_enabled=True))
    telemetry.tracer.start_span("queued").end()
    started = time.monotonic()
    telemetry.shutdown()
    assert time.monotonic() - started < 8  # SHUTDOWN_FLUSH_MS (2 s) plus slack


# ---------------------------------------------------------------- probes and metrics


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_and_probes_follow_a_session(make_worker, nc):
    # No speculation: whether it beats the `end` here depends on the machine's speed.
    worker = await make_worker(build_commit="feedc0de", endpoint_speculate_ms=0)
    async with httpx.AsyncClient(base_url=worker.probe_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "alive"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        session = sid()
        inbox = await Inbox.open(nc, session)
        samples, rate = read_wav(CLIP)
        stats = await publish_pcm(nc, session, samples, sample_rate_hz=rate, speed=0)
        messages = await inbox.until_closed(within_s=60)
        response = await http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = samples_of(response.text)

    def value(name: str, **labels: str) -> float:
        # A labelled series appears at its first increment: absent means zero.
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    finals = [m for m in messages if m.get("is_final")]
    partials = [m for m in messages if m.get("type") == "transcript" and not m["is_final"]]
    assert value("stt_sessions_opened_total") == 1
    assert value("stt_sessions_closed_total", reason="end") == 1
    assert value("stt_sessions_active") == 0
    assert value("stt_chunks_received_total") == stats.chunks
    assert value("stt_chunks_received_bytes_total") == samples.size * 2
    assert value("stt_audio_received_seconds_total") == pytest.approx(samples.size / rate)
    assert value("stt_transcripts_published_total", kind="final") == len(finals) == 1
    assert value("stt_transcripts_published_total", kind="partial") == len(partials)
    assert value("stt_utterances_total", reason="end") == 1
    final_inferences = value(
        "stt_inference_duration_seconds_count", engine="faster-whisper", kind="final"
    )
    assert final_inferences == 1
    assert value("stt_inference_duration_seconds_sum", engine="faster-whisper", kind="final") > 0
    assert value("stt_final_latency_seconds_count") == 1
    assert value("stt_inference_queue_depth", kind="final") == 0
    assert value("stt_nats_connected") == 1 and value("stt_ready") == 1
    # The partials' pacing by CPU wait (`core/partial_pace`): reported, within its range.
    assert 0.1 <= values[("stt_partial_duty", ())] <= 1.0
    assert 0.0 <= values[("stt_cpu_wait_share", ())] <= 1.0
    # Which build this is, and the standard process collectors.
    assert value("stt_build_info", version=__version__, commit="feedc0de") == 1
    assert value("process_cpu_seconds_total") > 0 and value("process_open_fds") > 0
    assert any(name == "python_info" for name, _ in values)
    # No label ever carries a session id: the series count is bounded.
    assert session not in response.text


async def test_readiness_reports_loading_and_draining_while_liveness_holds(engine, nats_url, nc):
    gated = GatedEngine(engine)
    settings = load_settings(nats_url=nats_url, http_port=0, partial_interval_ms=60_000)
    worker = Worker(settings, gated)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # The probe server listens before the model loads.
        await asyncio.wait_for(worker.probes_up.wait(), 30)
        async with httpx.AsyncClient(base_url=worker.probe_url) as http:
            loading = await http.get("/readyz")
            assert loading.status_code == 503
            assert loading.json()["checks"]["engine"] == "loading"
            assert (await http.get("/healthz")).status_code == 200

            gated.warm_gate.set()
            await asyncio.wait_for(worker.ready.wait(), 30)
            assert (await http.get("/readyz")).status_code == 200

            # Mid-utterance SIGTERM: the final is still decoding while the worker drains.
            session = sid()
            inbox = await Inbox.open(nc, session)
            samples, rate = read_wav(CLIP)
            await publish_pcm(nc, session, samples, sample_rate_hz=rate, speed=0, send_end=False)
            await nc.flush()
            stop.set()
            await asyncio.wait_for(gated.decoding.wait(), 30)
            draining = await http.get("/readyz")
            assert draining.status_code == 503
            assert draining.json()["checks"]["draining"] == "draining"
            assert (await http.get("/healthz")).status_code == 200
            gated.decode_gate.set()
            final = await inbox.until(lambda m: m.get("is_final") is True)
            assert "surpassed" in final["transcript"].lower()
        await asyncio.wait_for(task, 30)
    finally:
        gated.warm_gate.set()
        gated.decode_gate.set()
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 30)


# ---------------------------------------------------------------- logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def test_json_logs_carry_session_and_trace_ids(make_worker, nc, capsys, restore_logging):
    setup_logging("INFO", "json")
    await make_worker()
    session = sid()
    header, trace_id, _ = traceparent()
    inbox = await Inbox.open(nc, session)
    await send_clip(nc, session, {"traceparent": header})
    await inbox.until_closed(within_s=60)
    # A bad message of the same turn, after the close: its warning carries the ids too.
    subject = f"ai.voice.stream.{session}"
    await nc.publish(subject, b"\xc1 not msgpack", headers={"traceparent": header})
    await inbox.until(lambda m: m.get("type") == "error")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    mine = [line for line in lines if line.get("session_id") == session]
    messages = {line["message"] for line in mine}
    assert {"session opened", "session closed"} <= messages
    assert any(m.startswith("rejected message") for m in messages)
    assert [line for line in mine if line.get("trace_id") != trace_id] == []
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


def test_text_logs_on_a_terminal_name_the_session(capsys, restore_logging):
    setup_logging("INFO", "text")
    with session_context("abc", "0af7651916cd43dd8448eb211c80319c"):
        logging.getLogger("stt_worker.test").info("hello")
    line = capsys.readouterr().err.strip()
    assert line.endswith("hello  session_id=abc trace_id=0af7651916cd43dd8448eb211c80319c")


# ---------------------------------------------------------------- exporter selection


def test_exporters_follow_the_protocol_and_hyperdx_switches(caplog):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    from stt_worker.runtime.telemetry.tracing import create_tracer_provider

    def inner_types(**overrides) -> list[type]:
        provider, exporters = create_tracer_provider(load_settings(**overrides))
        provider.shutdown()
        return [type(exporter._inner) for exporter in exporters]

    assert inner_types(otel_enabled=True) == [Http]
    assert inner_types(otel_enabled=True, otel_exporter_otlp_protocol="grpc") == [Grpc]
    assert inner_types(otel_enabled=False) == []
    # HyperDX alone: no second exporter retrying a collector nobody configured.
    assert inner_types(hyperdx_enabled=True, hyperdx_api_key="k") == [Http]
    both = inner_types(
        hyperdx_enabled=True, hyperdx_api_key="k", otel_exporter_otlp_endpoint="http://c:4318"
    )
    assert both == [Http, Http]
    with caplog.at_level(logging.ERROR):
        assert inner_types(hyperdx_enabled=True, otel_enabled=False) == []
    assert "HYPERDX_API_KEY is empty" in caplog.text
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        inner_types(otel_exporter_otlp_protocol="http/json")
