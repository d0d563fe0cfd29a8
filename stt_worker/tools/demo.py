"""``demo``: everything in one process. An embedded nats-server (unless ``--nats-url``), the
worker, a publisher streaming a WAV file at real time, and a subscriber printing each result
with its latency; a summary at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stt_worker.config import Settings, load_settings
from stt_worker.core.protocol import SessionClosed, State, Transcription
from stt_worker.runtime import bus
from stt_worker.runtime.bus import Delivery
from stt_worker.runtime.connection import redact_url
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import StreamStats, stream_file
from stt_worker.runtime.telemetry.logs import setup_logging
from stt_worker.tools.connection import connect_tool
from stt_worker.tools.console import format_delivery
from stt_worker.tools.embedded import running_worker
from stt_worker.tools.options import CliError, given

DEFAULT_SAMPLE = "conv_3utt_2s_1s.wav"
SAMPLE_ENV = "STT_SAMPLE_AUDIO"


@dataclass(slots=True)
class _Shown:
    """What the subscriber saw: the finals' text and latencies."""

    finals: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def demo(
    path: Path | None,
    *,
    speed: float,
    nats_url: str | None,
    engine_kind: str,
    whisper_url: str | None,
    model: str | None,
    state: State,
    vad: bool,
    timeout_s: float,
) -> int:
    """Stream `path` (default: the sample clip) through a worker in this process; 0 when its
    session closed within `timeout_s` of the last chunk."""
    path = path or find_sample_audio()
    if not path.is_file():
        raise CliError(f"no such file: {path}", status=2)
    if whisper_url and engine_kind != "http":
        raise CliError("--whisper-url needs --engine http", status=2)
    # The demo's output is the transcript, not the worker's logs.
    setup_logging("WARNING", "text")

    async with contextlib.AsyncExitStack() as stack:
        url = nats_url or (await stack.enter_async_context(NatsServer())).url
        print(f"nats     {redact_url(url)}{'' if nats_url else '  (embedded nats-server)'}")
        settings = load_settings(
            nats_url=url, **given(whisper_model_size=model, enable_vad=None if vad else False)
        )
        if speed == 0 or speed > settings.max_audio_speed > 0:
            # The demo's own worker, fed only by the demo: its pace is on purpose.
            settings = settings.model_copy(update={"max_audio_speed": 0})
        worker = await stack.enter_async_context(running_worker(settings, engine_kind, whisper_url))
        if worker.probe_url:
            print(f"metrics  {worker.probe_url}/metrics  (and /healthz, /readyz)")
        return await _session(path, settings, speed=speed, state=state, timeout_s=timeout_s)


async def _session(
    path: Path, settings: Settings, *, speed: float, state: State, timeout_s: float
) -> int:
    session_id = f"demo-{uuid.uuid4().hex[:8]}"
    stats = StreamStats()
    shown = _Shown()
    nc = await connect_tool(settings, "stt-streaming demo")
    try:
        subject = f"{settings.transcription_subject_prefix}.{session_id}"
        async with bus.deliveries(nc, subject) as deliveries:
            pace = "as fast as possible" if speed == 0 else f"at {speed:g}x real time"
            print(f"stream   {path.name} {pace}, session {session_id}\n")

            async def show_results() -> bool:
                async for delivery in deliveries:
                    if _show(delivery, stats, shown):
                        return True
                return False

            async with asyncio.TaskGroup() as tasks:
                results = tasks.create_task(show_results())
                await stream_file(
                    nc,
                    session_id,
                    path,
                    speed=speed,
                    state=state,
                    subject_prefix=bus.stream_prefix(settings),
                    stats=stats,
                )
                try:
                    async with asyncio.timeout(timeout_s):
                        closed = await results
                except TimeoutError:
                    closed = False
    finally:
        await nc.close()

    _print_summary(stats, shown)
    if not closed:
        print(f"no session_closed within {timeout_s:g} s of the last chunk", file=sys.stderr)
        return 1
    return 0


def _show(delivery: Delivery, stats: StreamStats, shown: _Shown) -> bool:
    """Print one result (a final with its latency); True once the session has closed."""
    message = delivery.message
    latency = None
    if isinstance(message, Transcription) and message.is_final:
        sent = stats.send_time_for(message.audio_end_s)
        latency = None if sent is None else delivery.received_at - sent
        shown.finals.append(message.transcript.strip())
        if latency is not None:
            shown.latencies.append(latency)
    print(format_delivery(delivery, latency_s=latency), flush=True)
    return isinstance(message, SessionClosed)


def _print_summary(stats: StreamStats, shown: _Shown) -> None:
    sent = f"{stats.audio_s:.1f} s of audio sent in {stats.wall_s:.1f} s"
    print(f"\n{len(shown.finals)} final(s) from {sent}")
    print(f"text     {' '.join(text for text in shown.finals if text)!r}")
    if latencies := shown.latencies:
        each = ", ".join(f"{value:.2f}" for value in latencies)
        print(
            f"latency  {each} s after the last audio of each final "
            f"(median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s)"
        )


def find_sample_audio() -> Path:
    """The demo's default WAV: $STT_SAMPLE_AUDIO, else shared/speech/ above the package or CWD."""
    # A developer convenience for the CLI only, so it is not part of the worker's Settings.
    override = os.environ.get(SAMPLE_ENV)
    if override:
        return Path(override)
    searched: list[Path] = []
    for base in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for directory in (base, *base.parents):
            candidate = directory / "shared" / "speech" / DEFAULT_SAMPLE
            if candidate.is_file():
                return candidate
            searched.append(directory)
    raise CliError(
        f"no sample audio: shared/speech/{DEFAULT_SAMPLE} is not in any parent of "
        f"{searched[0]} or {Path.cwd()}; pass a WAV file or set {SAMPLE_ENV}",
        status=2,
    )
