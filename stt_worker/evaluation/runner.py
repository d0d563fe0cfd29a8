"""Streaming each clip through the real worker and measuring it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ, pcm16_to_float32
from stt_worker.core.errors import EngineError, ProtocolError
from stt_worker.core.protocol import Error, SessionClosed, Transcription
from stt_worker.core.vad import FRAME_MS
from stt_worker.engines import create_engine
from stt_worker.engines.base import Audio, DecodeOptions, LocalEngine, Transcript
from stt_worker.evaluation.clips import audio_slice, load_clips, trailing_silence_frames
from stt_worker.evaluation.results import (
    _WER_TOLERANCE,
    BARE_RUNS,
    EOS_INFERENCE_FACTOR,
    PARTIAL_CHANGE_TARGET,
    READY_TIMEOUT_S,
    RESULTS_TIMEOUT_S,
    ROOT,
    WER_RATIO_TARGET,
    Clip,
    ClipResult,
    EvalOptions,
    EvalReport,
    FinalResult,
    PartialResult,
    Spread,
    Stability,
    Summary,
    TargetCheck,
)
from stt_worker.evaluation.stability import partial_stability
from stt_worker.evaluation.textnorm import corpus_wer, wer
from stt_worker.runtime import bus
from stt_worker.runtime.bus import Delivery, NatsClient
from stt_worker.runtime.connection import TOOL, connect
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.pipeline import speech_detectors
from stt_worker.runtime.publisher import StreamStats, stream_file

logger = logging.getLogger(__name__)


async def evaluate(options: EvalOptions) -> EvalReport:
    """Run the whole evaluation on its own nats-server and worker; both are gone on return."""
    overrides = {**options.settings, "whisper_model_size": options.model}
    base_settings = load_settings(**overrides)
    if options.speed == 0 or options.speed > base_settings.max_audio_speed > 0:
        # Our own worker, fed only by us: faster than its admission allows is on purpose.
        overrides["max_audio_speed"] = 0
    clips = await asyncio.to_thread(
        load_clips,
        options.manifest,
        speech_detectors(base_settings),
        files=options.files,
        limit=options.limit,
    )
    if not clips:
        raise FileNotFoundError(f"{options.manifest}: no clips selected")
    async with contextlib.AsyncExitStack() as stack:
        server_args: tuple[str, ...] = ()
        if base_settings.durable:  # durable mode needs JetStream, on a store of its own
            store = stack.enter_context(tempfile.TemporaryDirectory(prefix="stt-eval-js-"))
            server_args = ("-js", "-sd", store)
        server = await stack.enter_async_context(NatsServer(extra_args=server_args))
        settings = load_settings(**overrides, nats_url=server.url)
        engine = await asyncio.to_thread(create_engine, settings, options.engine)
        try:
            if not isinstance(engine, LocalEngine):
                raise EngineError(
                    f"{engine.info.name} runs elsewhere: the offline and bare-inference "
                    "baselines need a local engine (faster-whisper or openai-whisper)"
                )
            setup = {
                "engine": engine.info.name,
                "model": engine.info.model,
                "device": engine.info.device,
                **engine.info.extra,
                "endpoint_silence_ms": settings.endpoint_silence_ms,
                "partial_interval_ms": settings.partial_interval_ms,
                "vad_engine": settings.vad_engine,
                "vad_aggressiveness": settings.vad_aggressiveness,
                "vad_threshold": settings.vad_threshold,
                "max_utterance_s": settings.max_utterance_samples / SAMPLE_RATE_HZ,
                "max_concurrent_inferences": settings.max_concurrent_inferences,
                "partial_model": settings.partial_model or settings.whisper_model_size,
                "speed": options.speed,
            }
            results = await _run_worker_and_stream(engine, settings, clips, options.speed)
        finally:
            engine.close()
    summary = summarise(results, settings)
    return EvalReport(
        meta=machine_info(),
        setup={k: v if isinstance(v, int | float | bool) else str(v) for k, v in setup.items()},
        clips=results,
        summary=summary,
        targets=check_targets(summary, settings, options.speed),
    )


async def _run_worker_and_stream(
    engine: LocalEngine, settings: Settings, clips: Sequence[Clip], speed: float
) -> list[ClipResult]:
    results: list[ClipResult] = []
    async with worker_process(settings, engine.info.name):
        nc = await connect(settings, "stt-eval", TOOL)
        try:
            for index, clip in enumerate(clips):
                logger.info("clip %d/%d %s", index + 1, len(clips), clip.name)
                session_id = f"eval-{index:03d}-{time.time_ns() % 10**6:06d}"
                results.append(await measure_clip(nc, engine, settings, clip, session_id, speed))
        finally:
            await nc.close()
    return results


@dataclass(slots=True)
class WorkerProcess:
    """A worker started by `worker_process`: its pid (for CPU and memory readings), the
    probes and metrics URL it logged (None when it serves none), and its last log lines."""

    pid: int
    log: collections.deque[str]
    probe_url: str | None = None


_PROBE_URL = re.compile(r"probes and metrics at (http://[^\s\"]+)")


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings,
    engine_kind: str,
    module: str = "stt_worker.tools.cli",
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    cpus: frozenset[int] | None = None,
) -> AsyncIterator[WorkerProcess]:
    """`stt-streaming serve` in its own process, as deployments run it: in this process the
    publisher and subscriber would share its CPU and GIL (measured: in-worker inference ~7%
    slower at the median, up to 1.6x, than the same decode alone).

    `module` runs another worker with the same command line (``-m MODULE serve --engine
    KIND``) and readiness line ("worker ready"). `env` is
    added last: variables a `Settings` of this checkout may not know yet (a worker ignores
    unknown ones). `cwd`: the checkout whose worker runs (`python -m` imports from there
    first), to measure another commit beside this one in one run. `log_path`: a file that
    keeps every log line (the handle keeps the last 40). `cpus`: the only CPUs it may run on
    (set before it starts, so every thread it makes keeps to them)."""
    # Probes on a free port unless asked otherwise: the harness must not need 8080.
    env = {"STT_HTTP_PORT": "0", **os.environ, **settings_env(settings), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        "serve",
        "--engine",
        engine_kind,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus),
    )
    handle = WorkerProcess(process.pid, collections.deque(maxlen=40))
    ready = asyncio.Event()
    reader = asyncio.create_task(_read_log(process, handle, ready, log_path))
    try:
        waiting = asyncio.create_task(ready.wait())
        exited = asyncio.create_task(process.wait())
        await asyncio.wait(
            {waiting, exited}, timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        waiting.cancel()
        if not ready.is_set():
            raise RuntimeError("the worker did not become ready:\n" + "\n".join(handle.log))
        yield handle
    finally:
        await _stop(process)
        await reader


async def _read_log(
    process: asyncio.subprocess.Process,
    handle: WorkerProcess,
    ready: asyncio.Event,
    log_path: Path | None,
) -> None:
    """Keep the worker's last log lines, note its probes URL, and see it become ready."""
    assert process.stderr is not None
    log = handle.log
    # A harness's local file, written through a buffer: nothing a run waits on.
    with open(log_path or os.devnull, "a", encoding="utf-8") as kept:  # noqa: ASYNC230
        async for line in process.stderr:
            log.append(line.decode(errors="replace").rstrip())
            kept.write(log[-1] + "\n")
            _note(log[-1], handle, ready)


def _note(line: str, handle: WorkerProcess, ready: asyncio.Event) -> None:
    if handle.probe_url is None and (found := _PROBE_URL.search(line)):
        handle.probe_url = found.group(1)
    if "worker ready" in line:
        ready.set()


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)  # drain, as Kubernetes stops it
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes another process load the same `Settings`."""
    env: dict[str, str] = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        alias = type(settings).model_fields[name].alias or name
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[alias] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


async def stream_clip(
    nc: NatsClient, settings: Settings, clip: Clip, session_id: str, speed: float
) -> tuple[StreamStats, list[Delivery], bool]:
    """Stream one clip as one session; every message until session_closed, and whether it came."""
    stats = StreamStats()
    received: list[Delivery] = []
    subject = f"{settings.transcription_subject_prefix}.{session_id}"
    # Subscribed before the first chunk leaves.
    async with bus.deliveries(nc, subject) as deliveries:

        async def collect() -> bool:
            async for delivery in deliveries:
                received.append(delivery)
                if isinstance(delivery.message, SessionClosed):
                    return True
            return False

        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            await stream_file(
                nc,
                session_id,
                clip.path,
                speed=speed,
                subject_prefix=bus.stream_prefix(settings),
                stats=stats,
            )
            try:
                async with asyncio.timeout(RESULTS_TIMEOUT_S):
                    closed = await collector
            except TimeoutError:
                closed = False
    return stats, received, closed


async def measure_clip(
    nc: NatsClient,
    engine: LocalEngine,
    settings: Settings,
    clip: Clip,
    session_id: str,
    speed: float,
) -> ClipResult:
    """Stream `clip`, then decode it offline and each final's slice bare on the idle engine."""
    stats, received, closed = await stream_clip(nc, settings, clip, session_id, speed)
    run = _ClipRun(engine, settings, clip, stats, speed)
    finals: list[FinalResult] = []
    partials: list[PartialResult] = []
    errors: list[str] = []
    for item in received:
        message = item.message
        if isinstance(message, Error | ProtocolError):
            # A result that could not be read is reported as the worker's errors are.
            errors.append(f"{message.code}: {message.message}")
        if not isinstance(message, Transcription):
            continue
        sent = stats.send_time_for(message.audio_end_s)
        if sent is None:
            errors.append(f"no chunk sent for audio_end_s={message.audio_end_s}")
        elif message.is_final:
            finals.append(await _measure_final(run, message, item.received_at, sent))
        else:
            partials.append(_partial(message, item.received_at, sent))
    offline = await asyncio.to_thread(
        engine.transcribe_blocking, pcm16_to_float32([clip.pcm]), DecodeOptions()
    )
    stream_text = " ".join(f.text for f in finals if f.text)
    return ClipResult(
        name=clip.name,
        duration_s=clip.duration_s,
        reference=clip.reference,
        stream_text=stream_text,
        offline_text=offline.text.strip(),
        stream_wer=wer(clip.reference, stream_text),
        offline_wer=wer(clip.reference, offline.text),
        offline_inference_ms=offline.inference_s * 1000,
        closed=closed,
        stability=partial_stability(item.message for item in received),
        finals=finals,
        partials=partials,
        errors=errors,
    )


@dataclass(frozen=True, slots=True)
class _ClipRun:
    """One streamed clip, as measuring its finals needs it."""

    engine: LocalEngine
    settings: Settings
    clip: Clip
    stats: StreamStats
    speed: float


def _partial(message: Transcription, received_at: float, sent: float) -> PartialResult:
    return PartialResult(
        message.utterance_id,
        message.audio_end_s,
        (received_at - sent) * 1000,
        message.inference_ms,
        received_at,
        message.transcript.strip(),
    )


async def _measure_final(
    run: _ClipRun, message: Transcription, received_at: float, sent: float
) -> FinalResult:
    """A final's latencies, against its slice decoded bare on the idle engine."""
    settings, speed = run.settings, run.speed
    start_s, end_s = message.audio_start_s, message.audio_end_s
    silence = trailing_silence_frames(run.clip, start_s, end_s)
    ended_by = message.end_reason or "-"
    speech_end_s = end_s - silence * FRAME_MS / 1000
    speech_sent = run.stats.send_time_for(speech_end_s) or sent
    if ended_by == "size":
        # The speaker is still talking: the cut is decided when the utterance reaches the
        # length bound, after its chosen cut point; no final can exist before that chunk.
        bound_s = start_s + settings.max_utterance_samples / SAMPLE_RATE_HZ
        sent = speech_sent = run.stats.send_time_for(bound_s) or sent
    latency_ms = (received_at - sent) * 1000
    eos_latency_ms = (received_at - speech_sent) * 1000
    bare = await _bare_decode(run.engine, audio_slice(run.clip, start_s, end_s))
    bare_ms = bare.inference_s * 1000
    # The worker waited the endpoint silence, or less when `end` or the length cap came
    # first: subtract what it actually waited, so such finals do not look faster. Faster
    # than real time, that audio also took less wall time to arrive.
    waited_ms = _wall_ms(min(silence * FRAME_MS, settings.endpoint_silence_ms), speed)
    endpoint_ms = _wall_ms(settings.endpoint_silence_ms, speed)
    return FinalResult(
        utterance_id=message.utterance_id,
        audio_start_s=start_s,
        audio_end_s=end_s,
        ended_by=ended_by,
        trailing_silence_s=silence * FRAME_MS / 1000,
        speech_end_s=round(speech_end_s, 3),
        latency_last_chunk_ms=latency_ms,
        latency_speech_end_ms=eos_latency_ms,
        inference_ms=message.inference_ms,
        bare_inference_ms=bare_ms,
        eos_bound_ms=endpoint_ms + EOS_INFERENCE_FACTOR * bare_ms,
        eos_over_bare=(eos_latency_ms - waited_ms) / bare_ms if bare_ms else math.inf,
        text=message.transcript.strip(),
        bare_text=bare.text.strip(),
    )


async def _bare_decode(engine: LocalEngine, audio: Audio) -> Transcript:
    """Engine time for exactly this audio, on the now idle engine (off the event loop).

    One decode, like the worker's own: measured here, back-to-back repeats run on warm
    caches and come out ~10% faster than a first decode after idle (median of three: bare
    94 ms vs 106 ms in the worker; single run: 119 vs 120 ms), which is the state the worker
    decodes a final in.
    """
    runs = [
        await asyncio.to_thread(engine.transcribe_blocking, audio, DecodeOptions())
        for _ in range(BARE_RUNS)
    ]
    return sorted(runs, key=lambda each: each.inference_s)[BARE_RUNS // 2]


def _wall_ms(audio_ms: float, speed: float) -> float:
    """Wall time that `audio_ms` of audio took to send at `speed` (0: no time at all)."""
    return audio_ms / speed if speed > 0 else 0.0


def summarise(results: Sequence[ClipResult], settings: Settings) -> Summary:
    finals = [f for r in results for f in r.finals]
    partials = [p for r in results for p in r.partials]
    stream = corpus_wer((r.reference, r.stream_text) for r in results)
    offline = corpus_wer((r.reference, r.offline_text) for r in results)
    stability = sum((r.stability for r in results), Stability())
    return Summary(
        clips=len(results),
        audio_s=round(sum(r.duration_s for r in results), 3),
        finals=len(finals),
        finals_by_ending={
            kind: sum(f.ended_by == kind for f in finals) for kind in ("silence", "end", "size")
        },
        partials=len(partials),
        stream_wer=stream,
        offline_wer=offline,
        wer_ratio=stream / offline if offline else (1.0 if stream == 0 else None),
        latency_last_chunk_ms=Spread.of([f.latency_last_chunk_ms for f in finals]),
        latency_speech_end_ms=Spread.of([f.latency_speech_end_ms for f in finals]),
        partial_latency_ms=Spread.of([p.latency_ms for p in partials]),
        partial_interval_ms=Spread.of(_partial_intervals(results)),
        inference_ms=Spread.of([f.inference_ms for f in finals]),
        bare_inference_ms=Spread.of([f.bare_inference_ms for f in finals]),
        pipeline_overhead_ms=Spread.of([f.latency_last_chunk_ms - f.inference_ms for f in finals]),
        offline_inference_ms=Spread.of([r.offline_inference_ms for r in results]),
        eos_over_bare=Spread.of([f.eos_over_bare for f in finals]),
        finals_within_eos_bound=sum(f.latency_speech_end_ms <= f.eos_bound_ms for f in finals),
        finals_matching_bare_text=sum(f.text == f.bare_text for f in finals),
        stability=stability,
        partial_change_rate=stability.change_rate,
        stable_change_rate=stability.stable_change_rate,
        sessions_not_closed=[r.name for r in results if not r.closed],
        clips_without_final=[r.name for r in results if not r.finals],
    )


def check_targets(summary: Summary, settings: Settings, speed: float) -> list[TargetCheck]:
    """Issue 5's targets, each with its measured value and PASS / FAIL / not measured."""
    return [
        _wer_check(summary),
        _end_of_speech_check(summary, settings, speed),
        _partial_change_check(summary),
        _stable_change_check(summary),
    ]


def _wer_check(summary: Summary) -> TargetCheck:
    ratio = summary.wer_ratio
    return TargetCheck(
        "streaming WER / offline WER (corpus)",
        "-" if ratio is None else f"{ratio:.3f}",
        f"<= {WER_RATIO_TARGET}",
        summary.stream_wer <= WER_RATIO_TARGET * summary.offline_wer + _WER_TOLERANCE,
        f"{summary.stream_wer:.4f} vs {summary.offline_wer:.4f}",
    )


def _end_of_speech_check(summary: Summary, settings: Settings, speed: float) -> TargetCheck:
    eos = summary.eos_over_bare
    name = "end of speech -> final: (latency - silence waited) / bare inference, p95"
    value = "-" if eos.p95 is None else f"{eos.p95:.2f}"
    if speed != 1:
        return TargetCheck(
            name,
            value,
            f"<= {EOS_INFERENCE_FACTOR}",
            None,
            f"not measured: speed {speed:g}, latency is only meaningful at speed 1",
        )
    return TargetCheck(
        name,
        value,
        f"<= {EOS_INFERENCE_FACTOR}",
        None if eos.p95 is None else eos.p95 <= EOS_INFERENCE_FACTOR,
        f"{summary.finals_within_eos_bound} / {summary.finals} finals within "
        f"{settings.endpoint_silence_ms} ms + {EOS_INFERENCE_FACTOR} x bare inference",
    )


def _partial_change_check(summary: Summary) -> TargetCheck:
    stability = summary.stability
    rate = summary.partial_change_rate
    return TargetCheck(
        "partial words later changed",
        "-" if rate is None else f"{rate:.3f}",
        f"< {PARTIAL_CHANGE_TARGET}",
        None if rate is None else rate < PARTIAL_CHANGE_TARGET,
        f"{stability.words_changed} / {stability.words_shown} words; "
        f"{stability.revised_partials} / {stability.partials} partials revised; "
        f"{stability.words_edited} words edited (aligned)",
    )


def _stable_change_check(summary: Summary) -> TargetCheck:
    stability = summary.stability
    stable_rate = summary.stable_change_rate
    return TargetCheck(
        "words within stable_chars later changed",
        "-" if stable_rate is None else f"{stable_rate:.3f}",
        "report only",
        # No verdict: finals are decoded afresh with the whole utterance and may
        # correct a stable word (issue 5's "without reason"); reported, not gated.
        None,
        "messages carry no stable_chars"
        if not stability.stable_partials
        else f"{stability.stable_words_changed} / {stability.stable_words} words in "
        f"{stability.stable_partials} partials",
    )


def _partial_intervals(results: Sequence[ClipResult]) -> list[float]:
    """Receive-time gaps between consecutive partials of the same utterance."""
    gaps = []
    for result in results:
        for a, b in zip(result.partials, result.partials[1:], strict=False):
            if a.utterance_id == b.utterance_id:
                gaps.append((b.received_at - a.received_at) * 1000)
    return gaps


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: the CPU model is only informative
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": commit,
        "command": shlex.join(sys.orig_argv),
    }
