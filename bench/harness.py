"""What the load benchmarks share: the worker's CPU, memory and metrics read while it is under
load (`Sampler`), the speech timelines of `bench.loadgen`, a results subscriber beside the
batch publisher (`connected`), and the scoring of a step of endpointed finals (`score_ours`:
end of speech -> final per final, judged over the step and its last third).

`bench.neighbours` scores its honest sessions with it; `bench.capacity` has a steady-state
judgement of its own (`bench.steady`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import BatchPublisher, LoadRun, SessionPlan, speech_timeline
from stt_worker.config import Settings
from stt_worker.core.protocol import SessionClosed, Transcription
from stt_worker.core.vad import FRAME_MS, DetectorFactory
from stt_worker.evaluation.clips import trailing_silence_frames
from stt_worker.evaluation.results import Clip
from stt_worker.evaluation.runner import WorkerProcess

MAX_LOOP_CLIP_S = 15.0  # longer clips hit the 16 s utterance cap: size cuts, not endpoints
SUSTAIN_MARGIN_MS = 1000.0  # the "+ 1 s" after the endpoint silence (or the buffer)
SAMPLE_S = 0.5


@dataclass(slots=True)
class Sample:
    at: float  # time.time()
    cpu_s: float  # the worker process's user + system CPU seconds so far
    rss_bytes: int
    loadavg_1m: float
    metrics: dict[str, float]  # a few of the worker's own (ours only)
    others_cpu_s: dict[str, float]  # this process (the load generator) and nats-server
    machine_busy_s: float = 0.0  # every CPU's non-idle seconds so far, whoever used them


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
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        sample = Sample(
            time.time(), times.user + times.system, rss, os.getloadavg()[0], metrics, others, busy
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

    def foreign_cores(self, start: float, end: float) -> float | None:
        """Mean CPU cores of everything but the worker, the load generator and nats-server:
        other work sharing the machine (unlike the load average, blind to the bench's own)."""
        inside = self.window(start, end)
        worker = self.cores(start, end)
        if worker is None:
            return None
        first, last = inside[0], inside[-1]
        machine = (last.machine_busy_s - first.machine_busy_s) / (last.at - first.at)
        return round(max(0.0, machine - worker - sum(self.other_cores(start, end).values())), 3)

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


def write_results(
    out: Path, data: dict[str, Any], text: str, json_path: Path | None = None
) -> None:
    """A benchmark's outputs: `data` as JSON (`json_path`, else `out`.json) and `text` as
    `out`.md, which is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    (json_path or out.with_suffix(".json")).write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)


def parse_metrics(text: str, watched: Collection[str] | None = None) -> dict[str, float]:
    """`watched` samples (default `WATCHED`; empty: all), keyed ``name:label:label``."""
    watched = WATCHED if watched is None else watched
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f":{v}" for v in sample.labels.values())
            if key in watched or not watched:
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
