"""Capacity benchmark: how many live sessions one machine carries, ours against a naive baseline.

One run, on its own nats-server, each worker in its own process (`worker_process`, so its
CPU time and memory are read apart from the load generator's), the load from
`bench.loadgen` (real speech, 20 ms chunks, real time, staggered starts):

1. Latency at N = 1: end of speech -> final, partial cadence, and the bare inference of
   each final's audio on an idle engine in this process, measured after the step.
2. Capacity of our worker (`stt-streaming serve`, defaults): N stepped up while the worker
   keeps up; then one step between the last sustained N and the first that was not.
   Sustained: every session closed after ``end`` (nothing left behind), the latency not
   climbing by more than 1 s from the first third of the step to the last (no growing
   backlog), and p95 end of speech -> final within the endpoint silence + 1 s, over the
   step and over its last third. *Throughput*: the largest N that kept up, latency aside.
3. Latency at 75% of that capacity, as in 1.
4. The same search for the naive baseline (`bench.naive_worker`: the seed's 16 s buffers,
   30 s window, no VAD, no scheduling), its sessions started at random phases over one
   buffer's length; interleaved with ours (at each N, one system right after the other),
   so that other work on a shared machine disturbs both searches alike. It has no
   endpoint: its wait is the buffer, so its bound is p95 buffer full (the chunk completing
   it) -> result within 1 s, the same "+ 1 s" after its trigger; every full buffer's
   result must arrive.
5. The non-inference path (measured first, on the fresh worker): 1, 100 and 1,000 silent
   sessions (room noise, real time): its CPU per session (above its idle CPU), chunk
   messages per second per core, and memory per session (RSS growth / sessions).
6. Engines' real-time factor on the shared clips (`bench.engines`, after the workers exit).

Writes ``<out>.md``, ``<out>.json``, ``<out>_latency.png`` and ``<out>_cpu.png``
(default ``bench/results/capacity``). The 1-minute load average is read before and during
every step: other work on the machine shows there.

    .venv/bin/python -m bench.capacity [--quick] [--out PREFIX] [--no-engines]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import (
    CHUNK_S,
    BatchPublisher,
    LoadRun,
    SessionPlan,
    plan_sessions,
    run_load,
    speech_timeline,
)
from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.protocol import Error, SessionClosed, Transcription
from stt_worker.core.vad import FRAME_MS, DetectorFactory
from stt_worker.engines import create_engine
from stt_worker.engines.base import DecodeOptions, LocalEngine
from stt_worker.evaluation.clips import audio_slice, load_clips, trailing_silence_frames
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT, Clip
from stt_worker.evaluation.runner import WorkerProcess, machine_info, worker_process
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.pipeline import speech_detectors

logger = logging.getLogger("bench.capacity")

DEFAULT_OUT = ROOT / "bench" / "results" / "capacity"
MAX_LOOP_CLIP_S = 15.0  # longer clips hit the 16 s utterance cap: size cuts, not endpoints
SUSTAIN_MARGIN_MS = 1000.0  # the "+ 1 s" after the endpoint silence (or the buffer)
EOS_INFERENCE_FACTOR = 1.15  # at N = 1: p95 end of speech -> final <= silence + 1.15 x bare
CAPACITY_RATIO_TARGET = 3.0
SESSIONS_PER_CORE_TARGET = 500
IDLE_SESSION_BYTES_TARGET = 256 * 1024
SILENT_SETTLE_S = 1.0  # after the last silent session started, before the CPU window
SAMPLE_S = 0.5


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run: `FULL` (the README's numbers) or `QUICK` (a smoke run)."""

    step_s: float
    ramp_s: float
    baseline_step_s: float  # its starts spread over one buffer's duration: random phases
    latency_n1_s: float
    ours: tuple[int, ...]
    baseline: tuple[int, ...]
    refine: bool
    silent: tuple[int, ...]
    silent_window_s: float
    silent_ramp_s: float
    clip_max_s: float  # loop only clips up to this long
    baseline_buffer_bytes: int  # the seed's STT_BUFFER_SIZE_BYTES (default 512000: 16 s)
    bare_max: int  # bare decodes per latency step (a sample of its finals)
    engine_clips: int | None
    engine_repeat: int
    engine_specs: tuple[str, ...]


FULL = Plan(
    step_s=20.0,
    ramp_s=4.0,
    baseline_step_s=36.0,
    latency_n1_s=60.0,
    ours=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
    baseline=(1, 2, 3, 4, 6, 8, 12, 16, 24),
    refine=True,
    silent=(1, 100, 1000),
    silent_window_s=8.0,
    silent_ramp_s=2.0,
    clip_max_s=MAX_LOOP_CLIP_S,
    baseline_buffer_bytes=512_000,
    bare_max=40,
    engine_clips=None,
    engine_repeat=2,
    engine_specs=(
        "faster-whisper tiny.en",
        "faster-whisper base",
        "openai-whisper tiny.en",
        "http -> whisper server",
    ),
)
# A smoke run (the test's): every phase once, in well under a minute. Short clips and 4 s
# baseline buffers, so that an 8 s step holds finals of both systems.
QUICK = Plan(
    step_s=8.0,
    ramp_s=0.5,
    baseline_step_s=8.0,
    latency_n1_s=8.0,
    ours=(1,),
    baseline=(1,),
    refine=False,
    silent=(1, 10, 50),
    silent_window_s=1.5,
    silent_ramp_s=0.5,
    clip_max_s=6.0,
    baseline_buffer_bytes=128_000,
    bare_max=4,
    engine_clips=1,
    engine_repeat=1,
    engine_specs=("faster-whisper tiny.en",),
)


# ---------------------------------------------------------------- the worker under load


@dataclass(slots=True)
class Sample:
    at: float  # time.time()
    cpu_s: float  # the worker process's user + system CPU seconds so far
    rss_bytes: int
    loadavg_1m: float
    metrics: dict[str, float]  # a few of the worker's own (ours only)
    others_cpu_s: dict[str, float]  # this process (the load generator) and nats-server


class Sampler:
    """Reads the worker's CPU, memory and (when it serves them) metrics every `SAMPLE_S`."""

    def __init__(self, worker: WorkerProcess) -> None:
        self._process = psutil.Process(worker.pid)
        self._url = f"{worker.probe_url}/metrics" if worker.probe_url else None
        self.samples: list[Sample] = []
        me = psutil.Process()
        self._others = {"generator": me}
        for child in me.children():
            if "nats-server" in child.name():
                self._others["nats-server"] = child

    async def sample(self, client: httpx.AsyncClient) -> Sample:
        times = self._process.cpu_times()
        rss = self._process.memory_info().rss
        metrics: dict[str, float] = {}
        if self._url is not None:
            metrics = parse_metrics((await client.get(self._url)).text)
        others = {}
        for name, process in self._others.items():
            other = process.cpu_times()
            others[name] = other.user + other.system
        sample = Sample(
            time.time(), times.user + times.system, rss, os.getloadavg()[0], metrics, others
        )
        self.samples.append(sample)
        return sample

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        async with httpx.AsyncClient(timeout=5) as client:

            async def loop() -> None:
                while True:
                    await self.sample(client)
                    await asyncio.sleep(SAMPLE_S)

            task = asyncio.create_task(loop())
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.sample(client)

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def cores(self, start: float, end: float) -> float | None:
        """Mean CPU cores the worker used between the first and last sample in the window."""
        inside = self.window(start, end)
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return None
        return (inside[-1].cpu_s - inside[0].cpu_s) / (inside[-1].at - inside[0].at)

    def other_cores(self, start: float, end: float) -> dict[str, float]:
        """Mean CPU cores of the load generator (this process) and nats-server."""
        inside = self.window(start, end)
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return {}
        first, last = inside[0], inside[-1]
        return {
            name: round(
                (last.others_cpu_s[name] - first.others_cpu_s[name]) / (last.at - first.at), 3
            )
            for name in last.others_cpu_s
        }

    def rate(self, name: str, start: float, end: float) -> float | None:
        inside = [s for s in self.window(start, end) if name in s.metrics]
        if len(inside) < 2:
            return None
        return (inside[-1].metrics[name] - inside[0].metrics[name]) / (inside[-1].at - inside[0].at)


WATCHED = {
    "stt_sessions_active",
    "stt_inference_queue_depth:final",
    "stt_inference_queue_depth:partial",
    "stt_chunks_received_total",
}


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f":{v}" for v in sample.labels.values())
            if key in WATCHED:
                values[key] = sample.value
    return values


# ---------------------------------------------------------------- measuring one step


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99 and max, in the values' unit (inf counts: a missing result)."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=float)
    finite = np.where(np.isinf(array), 1e9, array)
    return {
        "n": len(values),
        **{f"p{q}": _round(float(np.percentile(finite, q))) for q in (50, 95, 99)},
        "max": _round(float(finite.max())),
    }


def _round(value: float) -> float | None:
    return None if value >= 1e9 else round(value, 1)


@dataclass(slots=True)
class Final:
    session: str
    start_s: float
    end_s: float
    ended_by: str
    sent_at: float  # wall time of the trigger: speech end (ours) / buffer full (baseline)
    eos_latency_ms: float  # end of speech -> final
    trigger_latency_ms: float  # last chunk of its audio -> final
    silence_waited_ms: float
    inference_ms: float | None
    bare_ms: float | None = None


@dataclass(slots=True)
class Step:
    system: str  # "ours" | "baseline"
    sessions: int
    duration_s: float
    sustained: bool
    keeps_up: bool  # real-time throughput: no result missing, latency not climbing
    growth_ms: float  # median latency, last third of the step - first third
    why: str
    bound_ms: float
    latency_ms: dict[str, Any]  # the criterion's latency: eos (ours) / trigger (baseline)
    latency_last_third_ms: dict[str, Any]
    eos_ms: dict[str, Any]
    partial_latency_ms: dict[str, Any]
    partial_interval_ms: dict[str, Any]
    worker_cores: float | None
    worker_rss_mb: float | None
    queue_depth_final_max: float | None
    loadavg_before: float
    loadavg_max: float
    generator: dict[str, float]
    finals: int
    missing: int
    overhead: dict[str, Any] = field(default_factory=dict)
    other_cores: dict[str, float] = field(default_factory=dict)
    final_list: list[Final] = field(default_factory=list)


async def speech_step(
    system: str,
    nc: Connections,
    worker: WorkerProcess,
    settings: Settings,
    timelines: Callable[[int], Clip],
    sessions: int,
    duration_s: float,
    ramp_s: float,
) -> Step:
    loadavg_before = os.getloadavg()[0]
    prefix = f"{system}{sessions}x{time.time_ns() % 10**6:06d}"
    audio = [timelines(i) for i in range(sessions)]
    plans = plan_sessions(sessions, ramp_s, prefix, audio, random=True)
    sampler = Sampler(worker)
    # Ours closes every session after its last final; the baseline does not: it gets the
    # whole grace, room for the results of buffers that filled just before the end.
    grace_s = 10.0 + 2.0 * sessions if system == "ours" else 3.0 + 0.5 * sessions
    async with sampler.running():
        run = await run_load(
            nc.results,
            nc.publisher,
            plans,
            duration_s,
            stream_prefix=settings.stream_subject.removesuffix(".*"),
            transcription_prefix=settings.transcription_subject_prefix,
            results_grace_s=grace_s,
        )
    if system == "ours":
        step = score_ours(run, settings, sessions, duration_s)
    else:
        step = _baseline(run, settings, sessions, duration_s)
    window = sampler.window(run.started_at, run.ended_at)
    step.worker_cores = _maybe_round(sampler.cores(run.started_at, run.ended_at), 3)
    step.worker_rss_mb = round(max(s.rss_bytes for s in window) / 2**20, 1) if window else None
    depths = [s.metrics.get("stt_inference_queue_depth:final") for s in window]
    step.queue_depth_final_max = max((d for d in depths if d is not None), default=None)
    step.loadavg_before = round(loadavg_before, 2)
    step.loadavg_max = round(max((s.loadavg_1m for s in window), default=loadavg_before), 2)
    step.generator = run.lateness_summary()
    step.other_cores = sampler.other_cores(run.started_at, run.ended_at)
    logger.info(
        "%s N=%d: %s (%s) p95 %s ms (bound %.0f), cores %s, load %.2f",
        system,
        sessions,
        "sustained" if step.sustained else "NOT sustained",
        step.why,
        step.latency_ms["p95"],
        step.bound_ms,
        step.worker_cores,
        step.loadavg_max,
    )
    return step


def _maybe_round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _plans(run: LoadRun) -> dict[str, SessionPlan]:
    return {plan.session_id: plan for plan in run.plans}


def score_ours(run: LoadRun, settings: Settings, sessions: int, duration_s: float) -> Step:
    plans = _plans(run)
    finals: list[Final] = []
    partial_latency: list[float] = []
    partial_times: dict[tuple[str, int], list[float]] = {}
    closed = 0
    for item in run.received:
        message, plan = item.message, plans.get(item.session_id)
        closed += isinstance(message, SessionClosed)
        if plan is None or plan.audio is None or not isinstance(message, Transcription):
            continue
        start_s, end_s = message.audio_start_s, message.audio_end_s
        last_sent = run.send_time(plan, end_s)
        if last_sent is None:
            continue
        if not message.is_final:
            partial_latency.append((item.received_at - last_sent) * 1000)
            key = (item.session_id, message.utterance_id)
            partial_times.setdefault(key, []).append(item.received_at)
            continue
        silence = trailing_silence_frames(plan.audio, start_s, end_s) * FRAME_MS
        speech_sent = run.send_time(plan, end_s - silence / 1000) or last_sent
        finals.append(
            Final(
                item.session_id,
                start_s,
                end_s,
                message.end_reason or "-",
                speech_sent,
                (item.received_at - speech_sent) * 1000,
                (item.received_at - last_sent) * 1000,
                min(silence, settings.endpoint_silence_ms),
                message.inference_ms,
            )
        )
    intervals = [
        (b - a) * 1000 for times in partial_times.values() for a, b in itertools.pairwise(times)
    ]
    endpointed = [f for f in finals if f.ended_by == "silence"]
    bound = settings.endpoint_silence_ms + SUSTAIN_MARGIN_MS
    latency = [f.eos_latency_ms for f in endpointed]
    missing = sessions - closed  # a session closes only after its last final
    return _judge(
        "ours",
        sessions,
        duration_s,
        bound,
        endpointed,
        latency,
        missing,
        eos=[f.eos_latency_ms for f in finals if f.ended_by != "end"],
        partial_latency=partial_latency,
        intervals=intervals,
        finals=finals,
        run=run,
    )


def _baseline(run: LoadRun, settings: Settings, sessions: int, duration_s: float) -> Step:
    plans = _plans(run)
    buffer_s = settings.buffer_size_bytes / (SAMPLE_RATE_HZ * BYTES_PER_SAMPLE)
    finals: list[Final] = []
    got: dict[str, int] = {}
    for item in run.received:
        message, plan = item.message, plans.get(item.session_id)
        if plan is None or plan.audio is None or not isinstance(message, Transcription):
            continue
        start_s, end_s = message.audio_start_s, message.audio_end_s
        sent_s = (run.ticks - plan.start_tick) * CHUNK_S
        ended_by = "end" if end_s >= sent_s - 1e-3 and end_s - start_s < buffer_s - 1e-3 else "size"
        last_sent = run.send_time(plan, end_s)
        if last_sent is None:
            continue
        silence = trailing_silence_frames(plan.audio, start_s, end_s) * FRAME_MS
        speech_sent = run.send_time(plan, end_s - silence / 1000) or last_sent
        got[item.session_id] = got.get(item.session_id, 0) + (ended_by == "size")
        finals.append(
            Final(
                item.session_id,
                start_s,
                end_s,
                ended_by,
                last_sent,
                (item.received_at - speech_sent) * 1000,
                (item.received_at - last_sent) * 1000,
                0.0,
                None,
            )
        )
    # Every buffer that filled before the end must have its result.
    expected = {
        plan.session_id: int((run.ticks - plan.start_tick) * CHUNK_S // buffer_s)
        for plan in run.plans
    }
    missing = sum(max(0, expected[s] - got.get(s, 0)) for s in expected)
    flushed = [f for f in finals if f.ended_by == "size"]
    latency = [f.trigger_latency_ms for f in flushed] + [math.inf] * missing
    return _judge(
        "baseline",
        sessions,
        duration_s,
        SUSTAIN_MARGIN_MS,
        flushed,
        latency,
        missing,
        eos=[f.eos_latency_ms for f in flushed],
        partial_latency=[],
        intervals=[],
        finals=finals,
        run=run,
    )


def _judge(
    system: str,
    sessions: int,
    duration_s: float,
    bound_ms: float,
    judged: list[Final],
    latency: list[float],
    missing: int,
    *,
    eos: list[float],
    partial_latency: list[float],
    intervals: list[float],
    finals: list[Final],
    run: LoadRun,
) -> Step:
    # Thirds of the step by trigger time: a backlog that grows shows in the last one first.
    span = run.ended_at - run.started_at
    first_cut, last_cut = run.started_at + span / 3, run.started_at + span * 2 / 3
    values = [f.eos_latency_ms if system == "ours" else f.trigger_latency_ms for f in judged]
    early = [v for f, v in zip(judged, values, strict=True) if f.sent_at < first_cut]
    late = [v for f, v in zip(judged, values, strict=True) if f.sent_at >= last_cut]
    whole, last = spread(latency), spread(late)
    growth_ms = float(np.median(late) - np.median(early)) if early and late else 0.0
    # Keeps up (real-time throughput, whatever the latency): every result came, and the
    # latency did not climb by more than the margin from the first third to the last.
    keeps_up = bool(latency) and not missing and growth_ms <= SUSTAIN_MARGIN_MS
    if not latency:
        sustained, why = False, "no results to judge"
    elif missing:
        sustained, why = False, f"{missing} results missing (backlog)"
    elif not keeps_up:
        sustained, why = False, f"latency grows {growth_ms:.0f} ms over the step (backlog)"
    elif (whole["p95"] or 0) > bound_ms:
        sustained, why = False, "p95 over the bound"
    elif last["p95"] is not None and last["p95"] > bound_ms:
        sustained, why = False, "p95 of the last third over the bound"
    else:
        sustained, why = True, "ok"
    return Step(
        system=system,
        sessions=sessions,
        duration_s=duration_s,
        sustained=sustained,
        keeps_up=keeps_up,
        growth_ms=round(growth_ms, 1),
        why=why,
        bound_ms=bound_ms,
        latency_ms=whole,
        latency_last_third_ms=last,
        eos_ms=spread(eos),
        partial_latency_ms=spread(partial_latency),
        partial_interval_ms=spread(intervals),
        worker_cores=None,
        worker_rss_mb=None,
        queue_depth_final_max=None,
        loadavg_before=0.0,
        loadavg_max=0.0,
        generator={},
        finals=len(finals),
        missing=missing,
        final_list=finals,
    )


def add_bare_inference(
    step: Step, engine: LocalEngine, timelines: Callable[[int], Clip], limit: int
) -> None:
    """Decode each judged final's audio alone on the idle engine; the overhead ratios."""
    judged = [f for f in step.final_list if f.ended_by == "silence"]
    stride = max(1, math.ceil(len(judged) / limit))
    ratios, within = [], 0
    for final in judged[::stride]:
        # Sessions are named "<prefix>-<i>"; session i streams timeline i.
        timeline = timelines(int(final.session.rsplit("-", 1)[1]))
        audio = audio_slice(timeline, final.start_s, final.end_s)
        final.bare_ms = engine.transcribe_blocking(audio, DecodeOptions()).inference_s * 1000
        ratios.append((final.eos_latency_ms - final.silence_waited_ms) / final.bare_ms)
        within += final.eos_latency_ms <= (
            final.silence_waited_ms + EOS_INFERENCE_FACTOR * final.bare_ms
        )
    measured = [f for f in judged if f.bare_ms is not None]
    step.overhead = {
        "finals": len(measured),
        "bare_ms": spread([f.bare_ms for f in measured if f.bare_ms is not None]),
        "worker_inference_ms": spread([f.inference_ms or 0.0 for f in measured]),
        "eos_ms": spread([f.eos_latency_ms for f in measured]),
        # What the pipeline adds to the worker's own engine time: last chunk -> final minus
        # the final's `inference_ms` (queue wait, NATS both ways, decode, publish).
        "pipeline_ms": spread([f.trigger_latency_ms - (f.inference_ms or 0.0) for f in measured]),
        # (end of speech -> final - silence waited) / bare inference of the same audio
        "over_bare": {k: _ratio(v) for k, v in spread(ratios).items()},
        "within_bound": within,
    }


def _ratio(value: float | int | None) -> float | int | None:
    return value if value is None or isinstance(value, int) else round(value, 3)


# ---------------------------------------------------------------- the non-inference path


async def silent_steps(
    nc: Connections,
    worker: WorkerProcess,
    settings: Settings,
    counts: Sequence[int],
    window_s: float,
    ramp_s: float,
) -> dict[str, Any]:
    sampler = Sampler(worker)
    rows = []
    async with sampler.running():
        idle_from = time.time()
        await asyncio.sleep(max(1.0, window_s / 2))
        idle_cores = sampler.cores(idle_from, time.time()) or 0.0
        for count in counts:
            loadavg_before = os.getloadavg()[0]
            rss_before = sampler.samples[-1].rss_bytes
            plans = plan_sessions(count, ramp_s, f"silent{count}", [None] * count)
            run = await run_load(
                nc.results,
                nc.publisher,
                plans,
                ramp_s + SILENT_SETTLE_S + window_s,
                stream_prefix=settings.stream_subject.removesuffix(".*"),
                transcription_prefix=settings.transcription_subject_prefix,
                results_grace_s=30.0,
            )
            start = run.started_at + ramp_s + SILENT_SETTLE_S
            cores = sampler.cores(start, run.ended_at) or 0.0
            inside = sampler.window(start, run.ended_at)
            rss = max(s.rss_bytes for s in inside) if inside else rss_before
            chunks_per_s = sampler.rate("stt_chunks_received_total", start, run.ended_at) or 0.0
            dropped = sum(isinstance(r.message, Error) for r in run.received)
            marginal = max(cores - idle_cores, 1e-9)
            # Sessions' worth of real-time audio the worker actually took in: fewer than
            # `count` when the generator or the worker fell behind.
            carried = chunks_per_s * CHUNK_S
            rows.append(
                {
                    "sessions": count,
                    "worker_cores": round(cores, 4),
                    "cores_per_session": round(marginal / carried, 6) if carried else None,
                    "sessions_per_core": round(carried / marginal),
                    "real_time": chunks_per_s >= 0.97 * count / CHUNK_S,
                    "chunks_per_s": round(chunks_per_s),
                    "chunks_expected_per_s": round(count / CHUNK_S),
                    "chunks_per_s_per_core": round(chunks_per_s / cores) if cores else None,
                    "rss_mb": round(rss / 2**20, 1),
                    "rss_growth_bytes_per_session": round((rss - rss_before) / count),
                    "errors": dropped,
                    "generator": run.lateness_summary(),
                    "other_cores": sampler.other_cores(start, run.ended_at),
                    "loadavg_before": round(loadavg_before, 2),
                    "loadavg_max": round(max((s.loadavg_1m for s in inside), default=0.0), 2),
                }
            )
            logger.info("silent N=%d: %s", count, rows[-1])
            await wait_idle(sampler)
    return {"idle_cores": round(idle_cores, 4), "steps": rows}


async def wait_idle(sampler: Sampler, timeout_s: float = 30.0) -> None:
    """Until the worker reports no session and no queued inference (ours only)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = sampler.samples[-1].metrics if sampler.samples else {}
        if not last or not any(
            last.get(k, 0)
            for k in (
                "stt_sessions_active",
                "stt_inference_queue_depth:final",
                "stt_inference_queue_depth:partial",
            )
        ):
            return
        await asyncio.sleep(SAMPLE_S)


# ---------------------------------------------------------------- the whole run


class Timelines:
    """Speech timelines by session number, built once and shared by every step."""

    def __init__(self, clips: list[Clip], duration_s: float, detector: DetectorFactory) -> None:
        self._clips, self._duration_s, self._detector = clips, duration_s, detector
        self._cache: dict[int, Clip] = {}

    def __call__(self, index: int) -> Clip:
        if index not in self._cache:
            self._cache[index] = speech_timeline(
                self._clips, index, self._duration_s, self._detector
            )
        return self._cache[index]


@dataclass(slots=True)
class Ladder:
    """One system's capacity search: the N it tries and what it found so far."""

    system: str
    rungs: tuple[int, ...]
    measure: Callable[[int], Awaitable[Step]]
    known: dict[int, Step] = field(default_factory=dict)  # same N and duration: reused
    capacity: int = 0  # largest N sustained: real time and within the latency bound
    throughput: int = 0  # largest N that kept up in real time, latency aside
    failed: int | None = None  # first N not sustained
    done: bool = False  # stopped keeping up: no larger N is tried
    steps: list[Step] = field(default_factory=list)

    def record(self, sessions: int, step: Step) -> None:
        self.steps.append(step)
        if step.sustained and (self.failed is None or sessions < self.failed):
            self.capacity = max(self.capacity, sessions)
        elif not step.sustained and self.failed is None:
            self.failed = sessions
        if step.keeps_up:
            self.throughput = max(self.throughput, sessions)
        else:
            self.done = True


async def search(ladders: Sequence[Ladder], refine: bool) -> None:
    """Step N up; at each N every system that still keeps up is measured, one right after
    the other, so that other work on a shared machine disturbs both alike. Then, per
    system, once between its last sustained N and the first that was not."""
    for sessions in sorted({n for ladder in ladders for n in ladder.rungs}):
        for ladder in ladders:
            if not ladder.done and sessions in ladder.rungs:
                step = ladder.known.get(sessions) or await ladder.measure(sessions)
                ladder.record(sessions, step)
    for ladder in ladders:
        if refine and ladder.failed is not None and ladder.failed - ladder.capacity > 1:
            middle = (ladder.capacity + ladder.failed) // 2
            ladder.done = False
            ladder.record(middle, await ladder.measure(middle))
        logger.info(
            "%s capacity: %d (keeps up to %d)", ladder.system, ladder.capacity, ladder.throughput
        )


@dataclass(slots=True)
class Connections:
    results: nats.aio.client.Client  # subscribes to what the worker publishes
    publisher: BatchPublisher  # the load


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Connections]:
    """A results subscriber and a batch publisher on `url`, closed on exit."""
    nc = await nats.connect(url, name="stt-capacity-results")
    publisher = BatchPublisher()
    try:
        await publisher.connect(url)
        yield Connections(nc, publisher)
    finally:
        await publisher.close()
        await nc.close()


async def bench_workers(
    server: NatsServer, plan: Plan, timelines: Timelines
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Ours and the baseline, each in its own process: the silent sessions (ours), latency
    at N = 1, both capacity searches interleaved, latency at 75% of our capacity. CPU and
    RSS are read against the moment before each step."""
    ours = load_settings(
        nats_url=server.url, otel_enabled=False, http_port=0, max_sessions=max(plan.silent) + 100
    )
    naive = load_settings(
        nats_url=server.url,
        buffer_size_bytes=plan.baseline_buffer_bytes,
        whisper_window_pad_s=30.0,  # Whisper's fixed 30 s window
        max_concurrent_inferences=1,  # one decode at a time, on every core
        # Both workers run at once (the searches interleave): subjects of its own, or each
        # would also take the other's sessions.
        stream_subject="bench.baseline.stream.*",
        transcription_subject_prefix="bench.baseline.transcription",
    )
    # Its sessions start at random phases over one buffer: full buffers fall at random.
    naive_ramp_s = naive.buffer_size_bytes / (SAMPLE_RATE_HZ * BYTES_PER_SAMPLE)
    engine = await asyncio.to_thread(create_engine, ours, "faster-whisper")
    assert isinstance(engine, LocalEngine)
    try:
        async with (
            worker_process(ours, "faster-whisper") as worker,
            connected(server.url) as nc,
        ):
            # Silent sessions first, on the fresh worker: RSS growth per session is then not
            # hidden by memory the speech steps freed.
            silent = await silent_steps(
                nc, worker, ours, plan.silent, plan.silent_window_s, plan.silent_ramp_s
            )

            async def measure(sessions: int, duration_s: float = plan.step_s) -> Step:
                return await speech_step(
                    "ours", nc, worker, ours, timelines, sessions, duration_s, plan.ramp_s
                )

            n1 = await measure(1, plan.latency_n1_s)
            await asyncio.to_thread(add_bare_inference, n1, engine, timelines, plan.bare_max)
            known = {1: n1} if plan.latency_n1_s == plan.step_s else {}
            ladder = Ladder("ours", plan.ours, measure, known)
            baseline = worker_process(naive, "faster-whisper", module="bench.naive_worker")
            async with baseline as naive_worker:

                async def measure_naive(sessions: int) -> Step:
                    return await speech_step(
                        "baseline",
                        nc,
                        naive_worker,
                        naive,
                        timelines,
                        sessions,
                        plan.baseline_step_s,
                        naive_ramp_s,
                    )

                naive_ladder = Ladder("baseline", plan.baseline, measure_naive)
                await search([ladder, naive_ladder], plan.refine)
            at75 = None
            if ladder.capacity >= 1:
                sessions = max(1, round(0.75 * ladder.capacity))
                at75 = known.get(sessions) or await measure(sessions)
                if not at75.overhead:
                    await asyncio.to_thread(
                        add_bare_inference, at75, engine, timelines, plan.bare_max
                    )
    finally:
        engine.close()
    return (
        {
            "capacity": ladder.capacity,
            "throughput": ladder.throughput,
            "steps": ladder.steps,
            "n1": n1,
            "at75": at75,
            "setup": _setup(ours),
        },
        {
            "capacity": naive_ladder.capacity,
            "throughput": naive_ladder.throughput,
            "steps": naive_ladder.steps,
            "setup": _setup(naive),
        },
        silent,
    )


def _setup(settings: Settings) -> dict[str, Any]:
    return {
        "model": settings.whisper_model_size,
        "endpoint_silence_ms": settings.endpoint_silence_ms,
        "partial_interval_ms": settings.partial_interval_ms,
        "window_pad_s": settings.whisper_window_pad_s,
        "max_concurrent_inferences": settings.max_concurrent_inferences,
        "buffer_size_bytes": settings.buffer_size_bytes,
        "chunk_timeout_s": settings.chunk_timeout_s,
        "beam_size": settings.whisper_beam_size,
    }


async def bench_engines(plan: Plan) -> list[dict[str, Any]]:
    from bench import engines  # jiwer and friends: only when engines are measured

    clips = [
        c
        for c in engines.load_clips(DEFAULT_MANIFEST, None)
        if c.duration_s <= plan.clip_max_s and not c.cut
    ][: plan.engine_clips]
    specs = tuple(s for s in engines.SPECS if s.label in plan.engine_specs)
    runs = await engines.run_all(specs, clips, plan.engine_repeat)
    rows = []
    for run in runs:
        summary = engines.summarise(run)
        rows.append({"engine": run.label, "model": run.model, "device": run.device, **summary})
    return rows


async def run_all(plan: Plan, engines: bool) -> dict[str, Any]:
    meta = machine_info()
    meta["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    detector = speech_detectors(load_settings())
    clips = [c for c in load_clips(DEFAULT_MANIFEST, detector) if c.duration_s <= plan.clip_max_s]
    longest = max(plan.step_s, plan.latency_n1_s, plan.baseline_step_s) + 1.0
    timelines = Timelines(clips, longest, detector)
    started = time.monotonic()
    async with NatsServer() as server:
        ours, baseline, silent = await bench_workers(server, plan, timelines)
    engine_rows = await bench_engines(plan) if engines else []
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["plan"] = dataclasses.asdict(plan)
    meta["clips"] = [c.name for c in clips]
    return {
        "meta": meta,
        "ours": ours,
        "baseline": baseline,
        "silent": silent,
        "engines": engine_rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, short steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output prefix")
    parser.add_argument("--no-engines", action="store_true", help="skip the engines' RTF")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # The baseline worker runs as `python -m bench.naive_worker`: it must find `bench`.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    result = asyncio.run(run_all(QUICK if args.quick else FULL, not args.no_engines))
    from bench.capacity_report import write_outputs

    command = ".venv/bin/python -m bench.capacity" + " ".join(["", *(argv or sys.argv[1:])])
    path = write_outputs(result, args.out, command)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
