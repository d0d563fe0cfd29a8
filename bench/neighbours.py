"""Neighbours benchmark: does one abusive publisher cost honest sessions their words or latency?

One real nats-server (monitoring on, to read its slow-consumer count), the worker in its own
process with the shipped defaults (`worker_process`), honest load from `bench.loadgen`: 8
sessions of the shared speech at real time in 20 ms chunks, staggered starts. For each abuse
mode the same honest load (same audio, same starts) runs twice in the same run: alone (the
baseline) and beside one abuser, the order alternating from mode to mode so that other work on
the machine hits both alike. Between runs the worker is let go idle (no session, nothing
queued), so an abuser's leftovers never fall into the next run.

The abuser runs in a process of its own (``--abuse MODE``: so its CPU is not the load
generator's), on one session, speaking the NATS client protocol through `BatchPublisher`:

- ``audio_50x``: speech at 50x real time, 20 ms chunks;
- ``audio_200x_1s``: speech at 200x real time, 1 s chunks;
- ``echo_50x``: microphone and ``playback`` at 50x real time (echo cancellation on);
- ``max_chunks_192k_8ch``: 192 kHz 8-channel chunks of ``STT_MAX_CHUNK_BYTES``, as fast as
  the socket takes them;
- ``state_change_flood``: tiny ``state_change`` messages, 1,000 per write, as fast as the
  socket takes them (the fastest one client publishes);
- ``garbage_flood``: random bytes (not msgpack, or not a message) on one subject, likewise.

Per mode: honest p95 end of speech -> final (end of speech from the audio's own VAD, as
`bench.harness` scores it, endpointed finals) beside the abuser and alone, their ratio;
honest finals missing (a final of the lone run whose audio no final of the abused run
overlaps, same session and audio); honest ``audio_dropped`` / ``rate_limited`` /
``overloaded`` errors and the messages they say were refused; what the abuser was told; the
worker's RSS and CPU, nats-server's slow consumers and its queue for the worker's
connection, the load average. Each mode runs three rounds (``--rounds``), the order
alternating by round too, and is judged on the finals of all of them together: one run's p95
over ~33 finals is its second-worst final, and the same code's maximal-chunks ratio moved
between 1.13 and 1.48 from run to run.

Each flood (`FLOODS`) also runs as a control, right after its abused run: the same abuser at
the rate it reached there, through the same nats-server, to a subject the worker does not
subscribe to, drained by `bench.flood_sink`; its ratio (`control_p95_ratio`) is what the
flood costs the honest sessions through the machine alone (nats-server's and the abuser's
CPU), the real ratio less it what the worker pays itself.

With ``--durable`` the worker runs in durable mode (nats-server with JetStream, audio through
the work-queue stream): the same load, abusers and controls; the stream's bytes are sampled
beside nats-server's queue (an honest message waits behind both), and
``--max-msgs-per-subject`` sets the stream's per-subject limit (0: none).

    .venv/bin/python -m bench.neighbours [--quick] [--out PREFIX] [--mode MODE ...]
        [--max-pending-mb MiB] [--durable [--max-msgs-per-subject N]]
        [--session-connections true|false] [--worker-cpus LIST] [--sessions N] [--rounds N]

``--worker-cpus`` runs the worker alone on those CPUs and nats-server, the load generator,
the abuser and the sink on the others: what a node whose worker has cores of its own (a
Guaranteed pod under the static CPU manager, nats-server elsewhere) would see.

writes ``<out>.md`` and ``<out>.json`` (default ``bench/results/neighbours``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    MAX_LOOP_CLIP_S,
    Connections,
    Final,
    Sampler,
    Timelines,
    connected,
    score_ours,
    spread,
    wait_idle,
)
from bench.loadgen import CHUNK_S, BatchPublisher, LoadRun, frame, plan_sessions, pub_header
from bench.loadgen import run_load as stream_load
from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.protocol import (
    Chunk,
    End,
    Error,
    Playback,
    Start,
    StateChange,
    Transcription,
    decode_server_message,
    encode_client_message,
)
from stt_worker.core.vad import FRAME_SAMPLES
from stt_worker.evaluation.clips import load_clips
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT
from stt_worker.evaluation.runner import WorkerProcess, machine_info, worker_process
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.pipeline import speech_detectors

logger = logging.getLogger("bench.neighbours")

DEFAULT_OUT = ROOT / "bench" / "results" / "neighbours"
RATIO_TARGET = 1.25
DROPPED_CODES = ("audio_dropped", "rate_limited", "overloaded")
REFUSED = re.compile(r"(\d+) messages refused")
CONNECTION_LOG = re.compile(r"disconnect|reconnect|slow consumer", re.IGNORECASE)
ABUSE_LEAD_S = 1.0  # the abuse is under way before the first honest session starts
IDLE_TIMEOUT_S = 90.0  # for the worker to finish the abuser's leftovers before the next run
# A subject the worker does not subscribe to: a control run's flood goes there, to a sink.
CONTROL_SUBJECT = "stt-neighbours-control"
MODES = (
    "audio_50x",
    "audio_200x_1s",
    "echo_50x",
    "max_chunks_192k_8ch",
    "state_change_flood",
    "garbage_flood",
)
# The modes that send as fast as the socket takes: each also gets a control run (the same
# flood at the same rate through the same nats-server, drained by `bench.flood_sink`).
FLOODS = ("max_chunks_192k_8ch", "state_change_flood", "garbage_flood")


@dataclass(frozen=True, slots=True)
class Transport:
    """How messages reach the worker: nats-server's per-connection queue limit (None: its
    default), and durable mode with the stream's per-subject limit (None: the setting's)."""

    max_pending_mb: float | None = None
    durable: bool = False
    max_msgs_per_subject: int | None = None
    session_connections: bool | None = None  # STT_SESSION_CONNECTIONS; None: its default

    def overrides(self) -> dict[str, Any]:
        """The worker's settings for it."""
        if not self.durable:
            if self.session_connections is None:
                return {}
            return {"session_connections": self.session_connections}
        if self.max_msgs_per_subject is None:
            return {"durable": True}
        return {"durable": True, "stream_max_msgs_per_subject": self.max_msgs_per_subject}


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run: `FULL` (the committed results) or `QUICK` (the test's smoke run)."""

    sessions: int
    run_s: float  # honest audio per run
    ramp_s: float  # honest starts spread over this
    grace_s: float  # after the `end`s, for the last finals and `session_closed`
    modes: tuple[str, ...]
    clip_max_s: float
    # Each mode's alone/beside(/control) runs this many times, order alternating, and judged
    # on the latencies of all of them: a p95 of one run's ~33 finals is its second worst,
    # which moved a mode's ratio from 1.22 to 1.48 between runs of the same code.
    rounds: int = 1


FULL = Plan(
    sessions=8,
    run_s=30.0,
    ramp_s=3.0,
    grace_s=30.0,
    modes=MODES,
    clip_max_s=MAX_LOOP_CLIP_S,
    rounds=3,
)
QUICK = Plan(
    sessions=2,
    run_s=4.0,
    ramp_s=0.5,
    grace_s=8.0,
    modes=("audio_200x_1s", "garbage_flood"),
    clip_max_s=4.0,
)


# ---------------------------------------------------------------- the abuser (own process)


def _speech(clip_max_s: float) -> np.ndarray:
    """The shared clips end to end: the abuser's microphone."""
    clips = load_clips(DEFAULT_MANIFEST, speech_detectors(load_settings()))
    return np.concatenate([c.pcm for c in clips if c.duration_s <= clip_max_s])


def _pieces(pcm: np.ndarray, samples: int) -> list[bytes]:
    usable = pcm[: pcm.size - pcm.size % samples]
    return [usable[i : i + samples].tobytes() for i in range(0, usable.size, samples)]


@dataclass(slots=True)
class Abuse:
    """What one mode publishes: `start` (None: none), then batches: each `paced` batch once
    per 20 ms tick (its pace is then fixed), otherwise back to back as the socket drains."""

    start: bytes | None
    batches: list[list[bytes]]  # payloads; cycled
    paced: bool


def abuse_of(mode: str, max_chunk_bytes: int) -> Abuse:
    speech = _speech(MAX_LOOP_CLIP_S)
    chunks_20ms = _pieces(speech, FRAME_SAMPLES)
    if mode in ("audio_50x", "echo_50x"):
        per_tick = 50  # 50 chunks of 20 ms per 20 ms: 50x real time
        if mode == "echo_50x":
            # The assistant's voice (the clips from the middle on) and its echo in the mic.
            played = np.roll(speech, speech.size // 2)
            echo = np.clip(speech + (played.astype(np.int32) // 4), -32768, 32767)
            mic, ref = _pieces(echo.astype(np.int16), FRAME_SAMPLES), _pieces(played, FRAME_SAMPLES)
            messages = [
                payload
                for m, p in zip(mic, ref, strict=True)
                for payload in (
                    encode_client_message(Playback(audio=p)),
                    encode_client_message(Chunk(audio=m)),
                )
            ]
            per_tick *= 2
        else:
            messages = [encode_client_message(Chunk(audio=c)) for c in chunks_20ms]
        batches = [messages[i : i + per_tick] for i in range(0, len(messages), per_tick)]
        return Abuse(encode_client_message(Start()), batches, paced=True)
    if mode == "audio_200x_1s":
        seconds = [encode_client_message(Chunk(audio=c)) for c in _pieces(speech, SAMPLE_RATE_HZ)]
        # 200 s of audio a second: 4 one-second chunks per 20 ms tick.
        batches = [seconds[i : i + 4] for i in range(0, len(seconds) - 3, 4)]
        return Abuse(encode_client_message(Start()), batches, paced=True)
    if mode == "max_chunks_192k_8ch":
        # The speech at 192 kHz (each sample 12 times) on 8 identical channels, interleaved.
        wide = np.repeat(np.repeat(speech[: 40 * SAMPLE_RATE_HZ], 12), 8)
        pieces = _pieces(wide, max_chunk_bytes // 2)
        batches = [[encode_client_message(Chunk(audio=p))] for p in pieces]
        return Abuse(encode_client_message(Start(sample_rate=192_000, channels=8)), batches, False)
    if mode == "state_change_flood":
        states = [encode_client_message(StateChange(state=s)) for s in ("responding", "listening")]
        return Abuse(encode_client_message(Start()), [states * 500], paced=False)
    if mode == "garbage_flood":
        rng = np.random.default_rng(20)
        garbage = [rng.bytes(int(n)) for n in rng.integers(1, 200, 1000)]
        return Abuse(None, [garbage], paced=False)
    raise ValueError(f"unknown abuse mode {mode!r}; one of {', '.join(MODES)}")


async def abuse(
    mode: str, url: str, subject: str, seconds: float, rate: float | None = None
) -> dict[str, Any]:
    """Publish `mode` on `subject` for `seconds` (a flood at most `rate` messages a second);
    what was sent, and the CPU it took."""
    settings = load_settings()
    plan = abuse_of(mode, settings.max_chunk_bytes)
    header = pub_header(subject)
    batches = [b"".join(frame(header, p) for p in batch) for batch in plan.batches]
    sizes = [len(batch) for batch in plan.batches]
    publisher = BatchPublisher()
    await publisher.connect(url, name=f"stt-neighbours-abuser-{mode}")
    if plan.start is not None:
        publisher.write([frame(header, plan.start)])
    print("abusing", flush=True)  # the parent waits for this line
    messages = bytes_sent = 0
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + seconds
    tick = 0
    while (now := time.monotonic()) < deadline:
        # Paced: one batch per tick; a control's flood: no faster than the real one went.
        due = tick * CHUNK_S if plan.paced else (messages / rate if rate else 0.0)
        if (delay := started + due - now) > 0:
            await asyncio.sleep(delay)
        index = tick % len(batches)
        publisher.write([batches[index]])
        await publisher.drain()
        if not plan.paced:
            await asyncio.sleep(0)  # the reader answers the server's PINGs
        messages += sizes[index]
        bytes_sent += len(batches[index])
        tick += 1
    if plan.start is not None:
        publisher.write([frame(header, encode_client_message(End()))])
    await publisher.drain()
    elapsed = time.monotonic() - started
    await publisher.close()
    return {
        "mode": mode,
        "messages": messages,
        "bytes": bytes_sent,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(messages / elapsed),
        "mb_per_s": round(bytes_sent / elapsed / 1e6, 2),
        "cores": round((time.process_time() - cpu_started) / elapsed, 3),
    }


# ---------------------------------------------------------------- one honest run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _monitor(monitor_port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/{path}", timeout=5) as reply:
        return dict(json.load(reply))


@dataclass(frozen=True, slots=True)
class ServerView:
    """nats-server's counters at one moment: slow consumers and the connections it closed."""

    slow_consumers: int
    closed: dict[int, str]  # connection id -> "name: reason"

    @classmethod
    def read(cls, monitor_port: int) -> ServerView:
        varz = _monitor(monitor_port, "varz")
        connz = _monitor(monitor_port, "connz?state=closed&limit=1024")
        closed = {
            int(c["cid"]): f"{c.get('name') or '?'}: {c.get('reason', '?')}"
            for c in connz.get("connections") or []
        }
        return cls(int(varz.get("slow_consumers", 0)), closed)

    def since(self, before: ServerView) -> dict[str, Any]:
        return {
            "slow_consumers": self.slow_consumers - before.slow_consumers,
            # A client that hung up is no news; the server cutting one off is.
            "closed": [
                why
                for cid, why in self.closed.items()
                if cid not in before.closed and not why.endswith("Client Closed")
            ],
        }


WORKER_CONNECTION = "stt-streaming"  # the name the worker's NATS connection gives
PENDING_EVERY_S = 0.25


def stored_bytes(monitor_port: int) -> int:
    """The bytes JetStream's streams hold (durable mode: the audio not yet acknowledged)."""
    jsz = _monitor(monitor_port, "jsz?streams=true")
    return sum(
        int(stream.get("state", {}).get("bytes", 0))
        for account in jsz.get("account_details") or []
        for stream in account.get("stream_detail") or []
    )


async def stream_drained(bench: Bench, sampler: Sampler) -> None:
    """Durable mode: until the stream is empty and the worker idle again, so a flood's
    backlog never falls into the next run (at most `IDLE_TIMEOUT_S`)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(stored_bytes, bench.monitor_port):
            break
        await asyncio.sleep(PENDING_EVERY_S)
    await wait_idle(sampler, max(0.0, deadline - time.monotonic()))


@dataclass(slots=True)
class PendingWatch:
    """nats-server's outbound queue to the worker's connection (`pending_bytes` in connz),
    sampled through a run: the bytes an honest message published now waits behind before
    the worker reads it (nats-server holds a publisher back only once this nears
    `max_pending`)."""

    monitor_port: int
    durable: bool = False
    samples: list[int] = dataclasses.field(default_factory=list)
    # Durable mode: the bytes stored in the audio stream (each audio message waits behind
    # those stored before it, until they are delivered).
    stored: list[int] = dataclasses.field(default_factory=list)

    def _read(self) -> int | None:
        connz = _monitor(self.monitor_port, "connz?limit=1024")
        for connection in connz.get("connections") or []:
            if connection.get("name") == WORKER_CONNECTION:
                return int(connection.get("pending_bytes", 0))
        return None

    async def watch(self) -> None:
        """Until cancelled."""
        while True:
            pending = await asyncio.to_thread(self._read)
            if pending is not None:
                self.samples.append(pending)
            if self.durable:
                self.stored.append(await asyncio.to_thread(stored_bytes, self.monitor_port))
            await asyncio.sleep(PENDING_EVERY_S)

    def summary(self) -> dict[str, float | None]:
        return _mb(self.samples)

    def stored_summary(self) -> dict[str, float | None]:
        return _mb(self.stored)


@dataclass(slots=True)
class SubjectWatch:
    """Durable mode: the most messages each session's subject held in the stream at once
    (sampled with `PendingWatch`), honest sessions apart from the abuser's: what a
    per-subject limit must leave an honest session."""

    js: Any  # the bench's JetStream context
    stream: str
    peaks: dict[str, int] = dataclasses.field(default_factory=dict)

    async def watch(self) -> None:
        """Until cancelled."""
        while True:
            info = await self.js.stream_info(self.stream, subjects_filter=">")
            for subject, count in (info.state.subjects or {}).items():
                self.peaks[subject] = max(count, self.peaks.get(subject, 0))
            await asyncio.sleep(PENDING_EVERY_S)

    def summary(self) -> dict[str, int]:
        honest = [n for subject, n in self.peaks.items() if "abuser-" not in subject]
        abuser = [n for subject, n in self.peaks.items() if "abuser-" in subject]
        return {"honest_max": max(honest, default=0), "abuser_max": max(abuser, default=0)}


def _mb(samples: list[int]) -> dict[str, float | None]:
    if not samples:
        return {"max_mb": None, "mean_mb": None}
    return {
        "max_mb": round(max(samples) / 1e6, 1),
        "mean_mb": round(sum(samples) / len(samples) / 1e6, 1),
    }


@dataclass(slots=True)
class Bench:
    """What every run shares: the server, the worker, the connections, the audio."""

    server: NatsServer
    monitor_port: int
    worker: WorkerProcess
    nc: Connections
    settings: Settings
    timelines: Timelines
    plan: Plan
    log_seen: set[str] = dataclasses.field(default_factory=set)

    def worker_connection_log(self) -> list[str]:
        """The worker's log lines about its NATS connection not seen before (its last 40)."""
        lines = [line for line in self.worker.log if CONNECTION_LOG.search(line)]
        new = [line[:300] for line in lines if line not in self.log_seen]
        self.log_seen.update(lines)
        return new


@dataclass(slots=True)
class Abuser:
    """The abuser's process and what it was told on its transcription subject."""

    process: asyncio.subprocess.Process
    told: collections.Counter[str]
    subscription: Any
    finals: list[Transcription] = dataclasses.field(default_factory=list)
    sink: asyncio.subprocess.Process | None = None  # a control run's: drains the flood

    def finals_summary(self) -> dict[str, Any]:
        """Its finals: how much inference its admitted audio cost the shared engine."""
        spans = [f.audio_end_s - f.audio_start_s for f in self.finals]
        return {
            "finals": len(spans),
            "audio_s_max": round(max(spans, default=0.0), 2),
            "audio_s_total": round(sum(spans), 1),
            "inference_ms_max": round(max((f.inference_ms for f in self.finals), default=0.0)),
            "inference_s_total": round(sum(f.inference_ms for f in self.finals) / 1000, 2),
        }


async def _started(args: list[str], ready: bytes) -> asyncio.subprocess.Process:
    """`python -m ARGS` once it printed `ready` (its first line)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if line.strip() != ready:
        raise RuntimeError(f"{args[0]} {args[1:3]} did not start: {line!r}")
    return process


async def start_abuser(
    bench: Bench, mode: str, session: str, control_rate: float | None = None
) -> Abuser:
    """`mode`'s abuser on `session`; with `control_rate` (messages a second), a control: the
    flood goes at that rate to a subject the worker does not subscribe to, drained by a
    sink process."""
    told: collections.Counter[str] = collections.Counter()
    finals: list[Transcription] = []

    async def on_reply(msg: Any) -> None:
        message = decode_server_message(msg.data)
        if isinstance(message, Error):
            told[message.code] += 1
        elif isinstance(message, Transcription) and message.is_final:
            finals.append(message)

    prefix = bench.settings.transcription_subject_prefix
    subscription = await bench.nc.results.subscribe(f"{prefix}.{session}", cb=on_reply)
    await bench.nc.results.flush()
    subject = f"{bench.settings.stream_subject.removesuffix('.*')}.{session}"
    seconds = ABUSE_LEAD_S + bench.plan.ramp_s + bench.plan.run_s
    where = ["--url", bench.server.url, "--seconds", str(seconds)]
    sink = None
    if control_rate is not None:
        subject = f"{CONTROL_SUBJECT}.{session}"
        # It outlasts the abuser by a second, to drain what nats-server still holds.
        sink_where = [*where[:2], "--seconds", str(seconds + 1.0)]
        sink = await _started(["bench.flood_sink", *sink_where, "--subject", subject], b"sinking")
        where += ["--rate", str(control_rate)]
    args = ["bench.neighbours", "--abuse", mode, "--subject", subject, *where]
    process = await _started(args, b"abusing")
    await asyncio.sleep(ABUSE_LEAD_S)
    return Abuser(process, told, subscription, finals, sink)


async def _last_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    """The JSON line a helper process prints last, once it exits (killed after a minute)."""
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    return dict(json.loads(out.decode().splitlines()[-1])) if out.strip() else {}


async def stop_abuser(abuser: Abuser) -> dict[str, Any]:
    """What the abuser sent (and, in a control, what its sink read)."""
    sent = await _last_line(abuser.process)
    if abuser.sink is not None:
        sent["sink"] = await _last_line(abuser.sink)
    return sent


async def honest_run(
    bench: Bench, mode: str, label: str, control_rate: float | None = None
) -> dict[str, Any]:
    """The honest load once: `label` "alone", "beside" `mode`'s abuser, or "control" (its
    flood at `control_rate` to a sink, not the worker); then wait until the worker is idle.
    Its summary, with each session's finals (audio spans) for the comparison."""
    plan = bench.plan
    abused = label != "alone"
    prefix = f"{label}-{mode}-{time.time_ns() % 10**6:06d}"
    audio = [bench.timelines(i) for i in range(plan.sessions)]
    plans = plan_sessions(plan.sessions, plan.ramp_s, prefix, audio)
    sampler = Sampler(bench.worker)
    server_before = await asyncio.to_thread(ServerView.read, bench.monitor_port)
    loadavg_before = os.getloadavg()[0]
    abuser = None
    pending = PendingWatch(bench.monitor_port, bench.settings.durable)
    watching = [asyncio.create_task(pending.watch())]
    subjects = SubjectWatch(bench.nc.results.jetstream(), bench.settings.jetstream_stream)
    if bench.settings.durable:
        watching.append(asyncio.create_task(subjects.watch()))
    async with sampler.running():
        if abused:
            abuser = await start_abuser(bench, mode, f"abuser-{prefix}", control_rate)
        run = await stream_load(
            bench.nc.results,
            bench.nc.publisher,
            plans,
            plan.run_s,
            stream_prefix=bench.settings.stream_subject.removesuffix(".*"),
            transcription_prefix=bench.settings.transcription_subject_prefix,
            results_grace_s=plan.grace_s,
        )
        sent = await stop_abuser(abuser) if abuser else {}
        for task in watching:
            task.cancel()
        idle_from = time.monotonic()
        await wait_idle(sampler, IDLE_TIMEOUT_S)
        if bench.settings.durable:
            await stream_drained(bench, sampler)
        idle_wait_s = time.monotonic() - idle_from
    if abuser is not None:
        await abuser.subscription.unsubscribe()
    server = await asyncio.to_thread(ServerView.read, bench.monitor_port)
    step = score_ours(run, bench.settings, plan.sessions, plan.run_s)
    window = sampler.window(run.started_at - ABUSE_LEAD_S, run.ended_at)
    result = {
        "label": label,
        "p95_ms": step.latency_ms["p95"],
        "latency_ms": step.latency_ms,
        "finals": sum(len(spans) for spans in _finals(run)),
        "unclosed": step.missing,
        "errors": dict(_honest_errors(run)),
        "refused_messages": _refused(run),
        "worker_cores": _round(sampler.cores(run.started_at, run.ended_at), 3),
        # On one machine the abuser and nats-server take CPU the worker would have had.
        "other_cores": sampler.other_cores(run.started_at, run.ended_at),
        "worker_rss_mb_max": round(max(s.rss_bytes for s in window) / 2**20, 1) if window else None,
        "loadavg_before": round(loadavg_before, 2),
        "loadavg_max": round(max((s.loadavg_1m for s in window), default=loadavg_before), 2),
        "generator": run.lateness_summary(),
        "server": server.since(server_before),
        # What honest messages waited behind at nats-server: the worker's queue there.
        "worker_pending_mb": pending.summary(),
        "stream_stored_mb": pending.stored_summary(),
        "stream_msgs_per_subject": subjects.summary() if bench.settings.durable else None,
        "worker_connection_log": bench.worker_connection_log(),
        "idle_wait_s": round(idle_wait_s, 1),
        "abuser_sent": sent,
        "abuser_told": dict(abuser.told) if abuser else {},
        "abuser_finals": abuser.finals_summary() if abuser else {},
        "spans": _finals(run),
        # Every endpointed final's latency: rounds are judged on all of them (`pooled`).
        "latencies_ms": [
            round(f.eos_latency_ms, 1) for f in step.final_list if f.ended_by == "silence"
        ],
        # The slowest endpointed finals: which session, where in its audio, how late.
        "slowest": _slowest(step.final_list, run),
    }
    logger.info(
        "%s %s: p95 %s ms, finals %d, errors %s, abuser told %s, load %.2f",
        mode,
        label,
        result["p95_ms"],
        result["finals"],
        result["errors"],
        result["abuser_told"],
        result["loadavg_max"],
    )
    return result


Spans = list[list[tuple[float, float]]]  # by session number: its finals' audio spans


SLOWEST = 5  # finals listed per run in `slowest`


def _slowest(finals: list[Final], run: LoadRun) -> list[dict[str, Any]]:
    """The `SLOWEST` endpointed finals by end of speech -> final: their session number, the
    audio they span, when their speech ended after the run began, and their decode."""
    index = _numbers(run)
    slowest = sorted(
        (f for f in finals if f.ended_by == "silence"), key=lambda f: -f.eos_latency_ms
    )[:SLOWEST]
    return [
        {
            "session": index.get(f.session),
            "audio_s": [round(f.start_s, 2), round(f.end_s, 2)],
            "speech_ended_at_s": round(f.sent_at - run.started_at, 2),
            "latency_ms": round(f.eos_latency_ms),
            "inference_ms": f.inference_ms,
        }
        for f in slowest
    ]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _numbers(run: LoadRun) -> dict[str, int]:
    """Each honest session's number by its id (the ids differ from run to run)."""
    return {plan.session_id: i for i, plan in enumerate(run.plans)}


def _finals(run: LoadRun) -> Spans:
    """Each honest session's finals as audio spans, by session number (ids differ by run)."""
    index = _numbers(run)
    spans: Spans = [[] for _ in run.plans]
    for item in run.received:
        message = item.message
        if item.session_id in index and isinstance(message, Transcription) and message.is_final:
            spans[index[item.session_id]].append((message.audio_start_s, message.audio_end_s))
    return spans


def _honest_errors(run: LoadRun) -> collections.Counter[str]:
    honest = {plan.session_id for plan in run.plans}
    return collections.Counter(
        item.message.code
        for item in run.received
        if item.session_id in honest and isinstance(item.message, Error)
    )


def _refused(run: LoadRun) -> int:
    """Honest messages the worker says it refused (its `rate_limited` errors count them)."""
    honest = {plan.session_id for plan in run.plans}
    return sum(
        int(found[1])
        for item in run.received
        if item.session_id in honest and isinstance(item.message, Error)
        if (found := REFUSED.search(item.message.message))
    )


def missing_finals(alone: Spans, beside: Spans) -> int:
    """Finals of the lone run whose audio no final of the same session beside the abuser
    overlaps: words lost (an utterance cut differently still overlaps, so it is not counted)."""
    missing = 0
    for spans, others in zip(alone, beside, strict=True):
        for start, end in spans:
            if not any(s < end and start < e for s, e in others):
                missing += 1
    return missing


# ---------------------------------------------------------------- modes and the whole run


def _ratio(run: dict[str, Any], alone: dict[str, Any]) -> float | None:
    if alone["p95_ms"] and run["p95_ms"] is not None:
        return round(run["p95_ms"] / alone["p95_ms"], 3)
    return None


async def measure_mode(bench: Bench, mode: str, abused_first: bool) -> dict[str, Any]:
    """`mode` over the plan's rounds (each `measure_round`, the order alternating), judged on
    all their finals together."""
    rounds = []
    for number in range(bench.plan.rounds):
        rounds.append(await measure_round(bench, mode, abused_first == (number % 2 == 0)))
    return rounds[0] if len(rounds) == 1 else pooled(rounds)


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One verdict for a mode's rounds: the p95s of all their finals, the counts summed; each
    run's other figures as the first round had them, and every round's ratios in `rounds`."""
    first = rounds[0]
    runs = {}
    for label in ("alone", "beside", "control"):
        if first[label] is not None:
            latencies = [v for r in rounds for v in r[label]["latencies_ms"]]
            summary = spread(latencies)
            runs[label] = {**first[label], "latency_ms": summary, "p95_ms": summary["p95"]}
    told: collections.Counter[str] = collections.Counter()
    for r in rounds:
        told.update(r["abuser_codes"])
    counts = {
        key: sum(r[key] for r in rounds)
        for key in (
            "honest_missing",
            "honest_dropped",
            "honest_refused_messages",
            "honest_unclosed",
        )
    }
    result = judged(first["mode"], " / ".join(r["order"] for r in rounds), runs, counts, told)
    result["rounds"] = [
        {key: r[key] for key in ("order", "honest_p95_ratio", "control_p95_ratio")} for r in rounds
    ]
    return result


async def measure_round(bench: Bench, mode: str, abused_first: bool) -> dict[str, Any]:
    """`mode` alone and beside its abuser (in that order or the other) and, for a flood,
    the control right after the abused run, at the rate its abuser reached there."""
    runs: dict[str, dict[str, Any]] = {}
    for label in ("beside", "alone") if abused_first else ("alone", "beside"):
        runs[label] = await honest_run(bench, mode, label)
        if label == "beside" and mode in FLOODS:
            # 0 (no figure from the abused run): the control floods unthrottled.
            rate = runs["beside"]["abuser_sent"].get("messages_per_s") or 0.0
            runs["control"] = await honest_run(bench, mode, "control", rate)
    alone, beside = runs["alone"], runs["beside"]
    counts = {
        "honest_missing": missing_finals(alone["spans"], beside.pop("spans")),
        "honest_dropped": sum(beside["errors"].get(code, 0) for code in DROPPED_CODES),
        "honest_refused_messages": beside["refused_messages"],
        "honest_unclosed": beside["unclosed"],
    }
    control = runs.get("control")
    if control is not None:
        control["missing"] = missing_finals(alone["spans"], control.pop("spans"))
    alone.pop("spans")
    order = "beside first" if abused_first else "alone first"
    return judged(mode, order, runs, counts, beside["abuser_told"])


def judged(
    mode: str,
    order: str,
    runs: dict[str, dict[str, Any]],
    counts: dict[str, int],
    told: dict[str, int],
) -> dict[str, Any]:
    """A mode's verdict from its runs (alone, beside, control) and the honest losses."""
    alone, beside, control = runs["alone"], runs["beside"], runs.get("control")
    ratio = _ratio(beside, alone)
    missing, unclosed = counts["honest_missing"], counts["honest_unclosed"]
    dropped, refused = counts["honest_dropped"], counts["honest_refused_messages"]
    misses = []
    if ratio is None or ratio > RATIO_TARGET:
        misses.append(f"honest p95 ratio {ratio} (target <= {RATIO_TARGET})")
    if missing or unclosed:
        misses.append(f"{missing} honest finals missing, {unclosed} sessions unclosed")
    if dropped or refused:
        misses.append(f"{dropped} honest drop errors, {refused} refused")
    if not told:
        misses.append("the abuser was told nothing")
    return {
        "mode": mode,
        "order": order,
        "honest_p95_ratio": ratio,
        # The same flood beside the same load, but to a sink: what the machine alone costs.
        "control_p95_ratio": _ratio(control, alone) if control else None,
        "honest_p95_ms": beside["p95_ms"],
        "honest_p95_alone_ms": alone["p95_ms"],
        **counts,
        "abuser_codes": dict(told),
        "abuser_told": bool(told),
        "met": not misses,
        "misses": misses,
        "beside": beside,
        "alone": alone,
        "control": control,
    }


def server_args(monitor_port: int, transport: Transport, folder: Path) -> tuple[str, ...]:
    """nats-server's arguments: monitoring on `monitor_port`; JetStream (stored in `folder`)
    in durable mode; with a `max_pending_mb`, a config file in `folder` that sets its
    per-connection queue limit (nats-server holds publishers back once a connection's queue
    nears it, and cuts the connection off past it)."""
    args: tuple[str, ...] = ("-m", str(monitor_port))
    if transport.durable:
        args += ("-js", "-sd", str(folder / "jetstream"))
    if transport.max_pending_mb is None:
        return args
    config = folder / "nats-server.conf"
    config.write_text(f"max_pending: {round(transport.max_pending_mb * 2**20)}\n")
    return (*args, "-c", str(config))


def cpu_list(text: str) -> frozenset[int]:
    """A CPU list as `taskset -c` takes it: "1", "0-3", "0,2-3"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    if not cpus:
        raise ValueError(f"no CPU in {text!r}")
    return frozenset(cpus)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def pin_others(worker_cpus: frozenset[int]) -> frozenset[int]:
    """Keep this process (the load generator) and whatever it starts from now on
    (nats-server, the abuser, the sink) off `worker_cpus`; the CPUs they keep to."""
    allowed = frozenset(os.sched_getaffinity(0))
    others = allowed - worker_cpus
    if not worker_cpus <= allowed or not others:
        raise ValueError(
            f"worker CPUs {sorted(worker_cpus)} must be some, not all, of {sorted(allowed)}"
        )
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), others)
    return others


async def run_all(
    plan: Plan, transport: Transport | None = None, worker_cpus: frozenset[int] | None = None
) -> dict[str, Any]:
    """Every mode of `plan`, alone and beside its abuser, on one server and one worker;
    with `worker_cpus`, the worker alone on those CPUs and everything else on the rest."""
    meta = machine_info()
    if worker_cpus is not None:
        meta["cpus"] = {"worker": sorted(worker_cpus), "others": sorted(pin_others(worker_cpus))}
    meta["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    detector = speech_detectors(load_settings())
    clips = [c for c in load_clips(DEFAULT_MANIFEST, detector) if c.duration_s <= plan.clip_max_s]
    timelines = Timelines(clips, plan.run_s + 1.0, detector)
    started = time.monotonic()
    monitor_port = free_port()
    transport = transport or Transport()
    modes = []
    with tempfile.TemporaryDirectory(prefix="stt-neighbours-") as folder:
        extra_args = server_args(monitor_port, transport, Path(folder))
        async with (
            NatsServer(extra_args=extra_args) as server,
            worker_process(
                settings := load_settings(
                    nats_url=server.url, otel_enabled=False, http_port=0, **transport.overrides()
                ),
                "faster-whisper",
                cpus=worker_cpus,
            ) as worker,
            connected(server.url) as nc,
        ):
            bench = Bench(server, monitor_port, worker, nc, settings, timelines, plan)
            if worker_cpus is not None:
                # As the kernel has them: the pinning took, for the worker and what it spares.
                meta["cpus"]["worker_seen"] = sorted(os.sched_getaffinity(worker.pid))
                meta["cpus"]["others_seen"] = sorted(os.sched_getaffinity(0))
            for number, mode in enumerate(plan.modes):
                modes.append(await measure_mode(bench, mode, abused_first=number % 2 == 0))
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["plan"] = dataclasses.asdict(plan)
    # None: nats-server's default (64 MB)
    meta["server_max_pending_mb"] = transport.max_pending_mb
    meta["clips"] = [c.name for c in clips]
    meta["worker"] = {
        "model": settings.whisper_model_size,
        "max_audio_speed": settings.max_audio_speed,
        "audio_burst_s": settings.audio_burst_s,
        "max_control_per_s": settings.max_control_per_s,
        "max_chunk_bytes": settings.max_chunk_bytes,
        "max_pending_finals_per_session": settings.max_pending_finals_per_session,
        "endpoint_silence_ms": settings.endpoint_silence_ms,
        "durable": settings.durable,
        "session_connections": settings.takes_session_connections(),
    }
    if settings.durable:
        meta["worker"]["stream_max_msgs_per_subject"] = settings.stream_max_msgs_per_subject
        meta["worker"]["max_ack_pending"] = settings.max_ack_pending
    targets = {
        "honest_p95_ratio": f"<= {RATIO_TARGET}",
        "honest_missing": "0",
        "honest_dropped": "0",
        "abuser_told": "true",
    }
    return {"meta": meta, "targets": targets, "modes": {m["mode"]: m for m in modes}}


# ---------------------------------------------------------------- the report


def markdown(result: dict[str, Any], command: str) -> str:
    meta = result["meta"]
    lines = [
        "# Neighbours: honest sessions beside one abuser",
        "",
        f"Command: `{command}`  ",
        f"Machine: {meta['cpu']}, {meta['nproc']} CPUs, Python {meta['python']}  ",
        f"Date: {meta['date']}, commit `{meta['commit']}`, {meta['wall_s']} s  ",
        f"Load average (1, 5, 15 min): start {meta['loadavg_start']}, end {meta['loadavg_end']}",
        "",
        f"{meta['plan']['sessions']} honest sessions of the shared speech at real time in 20 ms "
        f"chunks, {meta['plan']['run_s']:.0f} s each run, starts over {meta['plan']['ramp_s']} s; "
        "per mode the same load alone and beside one abuser (its own process, one session), "
        f"the order alternating by mode{_rounds_note(meta)}. Worker: `stt-streaming serve`, "
        f"shipped defaults ({json.dumps(meta['worker'])}); nats-server's max_pending: "
        f"{meta.get('server_max_pending_mb') or 'its default, 64'} MiB.",
        *_pinning(meta),
        "",
        "## Targets",
        "",
        "Per mode: honest p95 end of speech -> final beside the abuser <= "
        f"{RATIO_TARGET} x alone (`honest_p95_ratio`); no honest final missing "
        "(`honest_missing`: a final of the lone run that no final beside the abuser overlaps, "
        "and every session closed); no honest chunk dropped (`honest_dropped`: "
        "`audio_dropped` / `rate_limited` / `overloaded` errors, and no message refused); "
        "the abuser told why (an error reply).",
        "",
        "## Results",
        "",
        "| mode | p95 alone ms | p95 beside ms | ratio | control ratio | missing | dropped | "
        "abuser sent | abuser told | worker RSS MB | worker cores | nats-server cores | "
        "abuser cores | queue at nats-server MB | stored in stream MB | slow consumers | load | "
        "verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for mode in result["modes"].values():
        beside, alone = mode["beside"], mode["alone"]
        sent = beside["abuser_sent"]
        told = ", ".join(f"{n} `{code}`" for code, n in sorted(mode["abuser_codes"].items()))
        lines.append(
            f"| {mode['mode']} | {mode['honest_p95_alone_ms']} | {mode['honest_p95_ms']} | "
            f"{mode['honest_p95_ratio']} | {mode.get('control_p95_ratio') or '-'} | "
            f"{mode['honest_missing']} | "
            f"{mode['honest_dropped']} | {sent.get('messages_per_s', '?')} msg/s, "
            f"{sent.get('mb_per_s', '?')} MB/s | {told or 'nothing'} | "
            f"{alone['worker_rss_mb_max']} / {beside['worker_rss_mb_max']} | "
            f"{alone['worker_cores']} / {beside['worker_cores']} | "
            f"{alone['other_cores'].get('nats-server')} / "
            f"{beside['other_cores'].get('nats-server')} | {sent.get('cores', '?')} | "
            f"{beside['worker_pending_mb']['mean_mb']} / {beside['worker_pending_mb']['max_mb']} | "
            f"{_stored(beside)} | "
            f"{beside['server']['slow_consumers']} | "
            f"{beside['loadavg_max']} | {'met' if mode['met'] else 'MISSED'} |"
        )
    lines += [
        "",
        "RSS, worker and nats-server cores: alone / beside (the machine's cores are shared by "
        "the worker, nats-server, the load generator and the abuser). Load: the 1-minute load "
        "average, highest during the abused run. Queue at nats-server: the bytes waiting in "
        "nats-server for the worker's connection beside the abuser, mean / max (sampled every "
        f"{PENDING_EVERY_S} s): an honest message waits behind them. Control ratio (floods "
        "only): honest p95 in a control run over p95 alone; in the control the same abuser "
        "floods at the rate it reached beside the worker, through the same nats-server, but to "
        "a subject the worker does not subscribe to, drained by a sink process "
        "(`bench/flood_sink.py`): nats-server and the machine pay for the flood, the worker "
        "pays nothing. A control ratio near the real one says the cost is the machine's (CPU "
        "taken by nats-server and the abuser), not the worker's.",
        "",
        "## Verdicts",
        "",
    ]
    for mode in result["modes"].values():
        verdict = "met" if mode["met"] else "missed: " + "; ".join(mode["misses"])
        beside = mode["beside"]
        lines.append(
            f"- **{mode['mode']}** ({mode['order']}): {verdict}. Honest errors beside: "
            f"{beside['errors'] or 'none'}; sessions unclosed: {beside['unclosed']}; finals "
            f"{mode['alone']['finals']} alone, {beside['finals']} beside; worker idle again "
            f"{beside['idle_wait_s']} s after the run; nats-server closed "
            f"{beside['server']['closed'] or 'no connection'}{_per_subject(beside)}."
            + _rounds(mode)
        )
    missed = [mode for mode in result["modes"].values() if not mode["met"]]
    if missed:
        lines += ["", "## Why the misses", ""]
        worker = meta["worker"]
        lines += [f"- **{mode['mode']}**: {diagnosis(mode, worker)}" for mode in missed]
        controlled = [mode for mode in missed if mode.get("control_p95_ratio") is not None]
        if controlled:
            over = [m["mode"] for m in controlled if m["control_p95_ratio"] > RATIO_TARGET]
            lines += [
                "",
                f"Controls: the machine alone misses in {', '.join(over) or 'no mode'} "
                f"({len(over)} of {len(controlled)} missed floods). {remedy(worker)}",
            ]
    return "\n".join(lines) + "\n"


# What each mode's abuser costs the others when it misses, by mechanism (read from the code,
# docs/operations.md and the figures of the run): the run's own numbers are filled in.
MECHANISMS = {
    "garbage_flood": "past its share of error replies the subject is shed, as a "
    "state_change flood is: skipped unread in the worker's protocol parser, but every "
    "message still crosses nats-server and waits in its queue for the worker's one "
    "connection, ahead of the honest messages published after it",
    "state_change_flood": "the flood is skipped unread in the worker's protocol parser "
    "(stt_worker/runtime/shed_parser.py, a few hundred ns a message), but the publisher sends "
    "as fast as the worker reads: nats-server holds a publisher back only once its queue for "
    "a connection passes 3/4 of `max_pending` (64 MB), so that queue stays tens of MB deep "
    "and every honest message published meanwhile waits behind it (the queue column: the "
    "wait is the queue over the rate the worker reads). A cheaper skip lets the flood go "
    "faster, not the queue shrink; a smaller `max_pending` shrinks it, but a worker that "
    "falls behind is then cut off sooner (at 8 MiB nats-server cut it off on a loaded "
    "machine). On a starved CPU the honest sessions' own inboxes fall behind too",
    "max_chunks_192k_8ch": "a refused 256 KB chunk is skipped as its bytes arrive (never "
    "buffered; read 256 KiB at a time, stt_worker/runtime/read_size.py), but hundreds of MB/s "
    "still cross nats-server, the socket and the event loop's reads, and fill nats-server's "
    "queue for the worker ahead of the honest chunks; the abuser's admitted audio (2x real "
    "time, legal) makes finals of up to 16 s, each one decode of over a second on one of the "
    "engine's two slots",
    "echo_50x": "the echo canceller is off the loop and releases the GIL (measured: a thread "
    "running it does not slow the loop thread), so the cost is more likely the abuser's "
    "admitted audio (2x real time of microphone plus 2x of `playback`): its speech, mixed "
    "with the played voice, has no pauses, so its utterances run long and each final is one "
    "long decode that honest finals queued behind it wait for (no decode is preempted)",
}
# The floods with `STT_SESSION_CONNECTIONS` (the default in core NATS): no honest queue
# behind them after a session's first second, so what is left is CPU.
OWN_CONNECTIONS = (
    "after its first second each honest session is taken from its own subscription on the "
    "worker's second connection (`STT_SESSION_CONNECTIONS`), so nats-server's queue for the "
    "wildcard's connection (the queue column) delays only that first second; what the flood "
    "still costs the honest sessions is CPU: the worker's event loop reads it as fast as "
    "nats-server sends it (skipped unread: stt_worker/runtime/shed_parser.py, runs of alike "
    "messages in one match by shed_runs.py), and nats-server, the abuser and the load take "
    "the same two cores as the decodes (the worker's cores beside against alone)"
)
MECHANISMS_OWN = {
    "garbage_flood": OWN_CONNECTIONS,
    "state_change_flood": OWN_CONNECTIONS,
    "max_chunks_192k_8ch": "after its first second each honest session is taken from its "
    "own subscription on the worker's second connection (`STT_SESSION_CONNECTIONS`), the "
    "flood's payloads are discarded in the kernel as they arrive "
    "(stt_worker/runtime/shed_transport.py), and after 3 s the abuser's audio is all "
    "refused as a flood (`STT_FLOOD_FACTOR`), so no decode of it competes with the honest "
    "ones (before that rule its admitted 2x real time made 16 s utterances of random slices "
    "and was what this mode cost: bench/results/neighbours-flood.md); what is left is CPU "
    "on the shared cores: nats-server takes 0.8-0.9 cores to send 1.1 GB/s to the worker "
    "and the abuser 0.2, as in the control",
}
# What the control runs say, and what would reach the target (after the misses).
REMEDY_OWN = (
    "A control ratio over the target means the machine alone misses: on one 2-core machine "
    "the worker shares its CPUs with nats-server (0.5-0.8 cores beside a flood), the abuser "
    "and the load generator, which production does not ask of it. With "
    "`STT_SESSION_CONNECTIONS` no honest message waits behind the flood after its session's "
    "first second, so what the worker pays itself (the real ratio less the control's) is CPU "
    "taken from decodes on shared cores: its event loop's reading of the flood (a shed "
    "payload is discarded in the kernel, shed_transport.py), nats-server's sending to it, "
    "and the abuser's admitted audio. What would reach the target: the worker on CPUs of its "
    "own with nats-server on other nodes (bench/results/neighbours-pinned.md), and "
    "publishers that are not trusted behind the gateway or on a NATS account with its own "
    "limits."
)
REMEDY = (
    "A control ratio over the target means the machine alone misses: on one 2-core machine "
    "the worker shares its CPUs with nats-server (0.2-0.6 cores beside a flood), the abuser "
    "and the load generator, which production does not ask of it. What the worker pays "
    "itself (the real ratio less the control's) is mostly the wait behind nats-server's "
    "queue for its one connection and, on a starved CPU, its own backlog. What would reach "
    "the target: the worker on CPUs of its own (a Kubernetes Guaranteed QoS pod with whole "
    "cores, requests equal to limits, the kubelet's static CPU manager) and nats-server on "
    "other nodes, so a flood costs the worker only its reads; publishers that are not "
    "trusted behind the gateway (its own limits). Durable mode is no remedy by itself "
    "(`--durable`, bench/results/neighbours-floods-durable*.md): without a per-subject limit "
    "a flood's backlog in the stream grows to GBs and honest sessions lose most of their "
    "finals; with `STT_STREAM_MAX_MSGS_PER_SUBJECT` the server refuses the excess, but the "
    "flood refills its share of the stream as fast as the worker acknowledges it and "
    "nats-server spends up to a core refusing the rest. With core NATS no worker can keep a "
    "flood out of the queue its honest messages wait in."
)


# Durable mode, the same for every flood: what the stream does with it.
DURABLE_UNLIMITED = (
    "in durable mode nothing is shed before the callback (every message must be taken and "
    "acknowledged, or the server delivers it again), so each flood message is stored, pushed, "
    "decoded, refused and acknowledged one by one; the flood is stored faster than it is "
    "delivered and worked through, the stream's backlog grows as long as the flood lasts, and the "
    "consumer delivers in stream order, so every honest message stored after the backlog "
    "waits for all of it (`STT_MAX_ACK_PENDING` bounds what is pushed, not what is stored "
    "ahead). `STT_STREAM_MAX_MSGS_PER_SUBJECT` makes the server refuse the excess"
)
DURABLE_LIMITED = (
    "the server refused the abuser's messages past `STT_STREAM_MAX_MSGS_PER_SUBJECT` (the "
    "most its subject held is in the verdict), so an honest message waits behind at most "
    "that many of the abuser's in the consumer's one ordered delivery; but each "
    "acknowledgement frees a slot the flood fills at once, so the worker spends its time "
    "taking, refusing and acknowledging the abuser's messages one by one (durable mode sheds "
    "nothing) and nats-server spends CPU refusing the rest (the cores columns); a count "
    "bounds no bytes: of maximal chunks the limit is `STT_MAX_CHUNK_BYTES` times as many "
    "bytes, pushed faster than the worker reads (past `max_pending` it is cut off)"
)
DURABLE_REMEDY = (
    "Durable mode keeps a flood's excess out of the stream only with the per-subject limit: "
    "without it the stream's backlog grows for as long as the flood lasts and honest "
    "messages wait behind all of it. With it, what is left is what the flood's share of the "
    "stream costs (the worker's time on it, refilled as fast as it is acknowledged) and "
    "nats-server's CPU refusing the rest: CPU, not a queue, so a smaller limit did not help "
    "(1,000 against 3,000, bench/results/neighbours-floods-durable-1000.md), and an honest "
    "session must keep its open utterance and what arrives while no worker takes its audio."
)


def _pinning(meta: dict[str, Any]) -> list[str]:
    if "cpus" not in meta:
        return []
    cpus = meta["cpus"]
    return [
        "",
        f"CPUs: the worker alone on {cpus['worker']}; nats-server, the load generator, the "
        f"abuser and the sink on {cpus['others']} (`--worker-cpus`): a flood's cost to the "
        "machine stays off the worker's cores, as on a node with cores of its own.",
    ]


def mechanism_of(mode: str, worker: dict[str, Any]) -> str | None:
    """What the abuser of `mode` costs the others, by transport."""
    if worker.get("session_connections"):
        return MECHANISMS_OWN.get(mode, MECHANISMS.get(mode))
    if not worker.get("durable"):
        return MECHANISMS.get(mode)
    return DURABLE_LIMITED if worker.get("stream_max_msgs_per_subject") else DURABLE_UNLIMITED


def remedy(worker: dict[str, Any]) -> str:
    if worker.get("durable"):
        return DURABLE_REMEDY
    return REMEDY_OWN if worker.get("session_connections") else REMEDY


def _stored(run: dict[str, Any]) -> str:
    """The stream's bytes, mean / max ('-' in core NATS, or a result from before them)."""
    stored = run.get("stream_stored_mb") or {}
    if stored.get("max_mb") is None:
        return "-"
    return f"{stored['mean_mb']} / {stored['max_mb']}"


def _per_subject(run: dict[str, Any]) -> str:
    peaks = run.get("stream_msgs_per_subject")
    if not peaks:
        return ""
    return (
        f"; most messages one subject held in the stream: {peaks['honest_max']} (an honest "
        f"session), {peaks['abuser_max']} (the abuser)"
    )


def diagnosis(mode: dict[str, Any], worker: dict[str, Any]) -> str:
    """Why `mode` missed, with the run's evidence (`worker`: the run's worker settings)."""
    beside = mode["beside"]
    facts = []
    cut = [why for why in beside["server"]["closed"] if "Slow Consumer" in why]
    if cut:
        facts.append(
            f"nats-server cut the worker off {len(cut)} time(s) (Slow Consumer): what was in "
            "flight, honest chunks and `end`s among it, was lost and no one was told"
        )
    sent = beside["abuser_sent"]
    facts.append(
        f"the abuser sent {sent.get('messages_per_s')} msg/s ({sent.get('mb_per_s')} MB/s); "
        f"nats-server used {beside['other_cores'].get('nats-server')} cores beside it, "
        f"{mode['alone']['other_cores'].get('nats-server')} alone"
    )
    queue, rate = beside["worker_pending_mb"], sent.get("mb_per_s")
    stored = beside.get("stream_stored_mb") or {}
    if stored.get("max_mb") is not None:
        facts.append(
            f"the stream held {stored['mean_mb']} MB on average (at most {stored['max_mb']} MB) "
            f"and nats-server {queue['mean_mb']} MB for the worker's connection (at most "
            f"{queue['max_mb']} MB)"
        )
    elif queue.get("mean_mb") is not None and rate:
        who = "a session's first second" if worker.get("session_connections") else "an honest chunk"
        facts.append(
            f"nats-server held {queue['mean_mb']} MB for the worker on average (at most "
            f"{queue['max_mb']} MB): at the {rate} MB/s the worker took in, {who} published "
            f"meanwhile reached it about {1000 * queue['mean_mb'] / rate:.0f} ms late"
        )
    finals = beside["abuser_finals"]
    if finals.get("finals"):
        facts.append(
            f"the abuser's admitted audio made {finals['finals']} finals "
            f"({finals['audio_s_total']} s of audio, longest {finals['audio_s_max']} s, "
            f"{finals['inference_s_total']} s of inference, longest decode "
            f"{finals['inference_ms_max']} ms)"
        )
    control = mode.get("control")
    if control is not None:
        facts.append(_control_facts(mode, control))
    mechanism = mechanism_of(mode["mode"], worker)
    return "; ".join(facts) + (f". Likely cause: {mechanism}." if mechanism else ".")


def _control_facts(mode: dict[str, Any], control: dict[str, Any]) -> str:
    """The control run beside the real one: how much of the cost is the machine's."""
    real, machine = mode["honest_p95_ratio"], mode["control_p95_ratio"]
    sent = control["abuser_sent"]
    text = (
        f"in the control (the same flood at {sent.get('messages_per_s')} msg/s, "
        f"{sent.get('mb_per_s')} MB/s, to a sink the worker never sees) honest p95 was "
        f"{control['p95_ms']} ms, ratio {machine} against {real} beside the worker; "
        f"nats-server used {control['other_cores'].get('nats-server')} cores, the sink "
        f"{sent.get('sink', {}).get('cores')}, the worker {control['worker_cores']}"
    )
    if real is None or machine is None:
        return text
    if machine > RATIO_TARGET:
        text += (
            f", so the machine alone (nats-server, the abuser and the sink taking CPU from the "
            f"worker on shared cores) misses the {RATIO_TARGET} target"
        )
    return text + f"; the worker's own share of the ratio is about {real - machine:+.2f}"


def _rounds_note(meta: dict[str, Any]) -> str:
    rounds = meta["plan"].get("rounds", 1)
    return f", {rounds} rounds per mode (the order alternating by round too)" if rounds > 1 else ""


def _rounds(mode: dict[str, Any]) -> str:
    """A pooled mode's rounds, each with its own ratios (the first round's other figures)."""
    rounds = mode.get("rounds")
    if not rounds:
        return ""
    each = ", ".join(
        f"{r['honest_p95_ratio']}"
        + (f" (control {r['control_p95_ratio']})" if r["control_p95_ratio"] is not None else "")
        for r in rounds
    )
    return (
        f" Judged on the finals of {len(rounds)} rounds together "
        f"({mode['beside']['latency_ms']['n']} beside); each round's ratio: {each}; other "
        "figures are the first round's."
    )


def write_outputs(result: dict[str, Any], out: Path, command: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    result["meta"]["command"] = command
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    path = out.with_suffix(".md")
    path.write_text(markdown(result, command))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 sessions, 2 modes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output prefix")
    parser.add_argument(
        "--mode", action="append", choices=MODES, help="only this mode (repeatable)"
    )
    parser.add_argument(
        "--max-pending-mb",
        type=float,
        help="nats-server's max_pending per connection, in MiB (default: its own, 64)",
    )
    parser.add_argument(
        "--durable", action="store_true", help="the worker in durable mode (JetStream)"
    )
    parser.add_argument(
        "--session-connections",
        choices=("true", "false"),
        help="STT_SESSION_CONNECTIONS: sessions within their budgets on a second connection "
        "(default: the setting's, on in core NATS)",
    )
    parser.add_argument(
        "--worker-cpus",
        type=cpu_list,
        help="pin the worker to these CPUs (taskset's list: 1, 2-5) and all else to the rest",
    )
    parser.add_argument("--sessions", type=_positive, help="honest sessions (default: the plan's)")
    parser.add_argument(
        "--rounds",
        type=_positive,
        help="runs per mode, judged together (default: the plan's, 3; --quick 1); the order "
        "alternates by round",
    )
    parser.add_argument(
        "--max-msgs-per-subject",
        type=int,
        help="durable mode: the stream's per-subject limit (0: none; default: the setting's)",
    )
    # The abuser's own process (started by the benchmark).
    parser.add_argument("--abuse", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--subject", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.abuse:
        sent = asyncio.run(abuse(args.abuse, args.url, args.subject, args.seconds, args.rate))
        print(json.dumps(sent), flush=True)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # The abuser runs as `python -m bench.neighbours`: it must find `bench`.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    plan = QUICK if args.quick else FULL
    if args.mode:
        plan = dataclasses.replace(plan, modes=tuple(args.mode))
    if args.sessions is not None:
        plan = dataclasses.replace(plan, sessions=args.sessions)
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    own = None if args.session_connections is None else args.session_connections == "true"
    transport = Transport(args.max_pending_mb, args.durable, args.max_msgs_per_subject, own)
    result = asyncio.run(run_all(plan, transport, args.worker_cpus))
    command = ".venv/bin/python -m bench.neighbours" + " ".join(["", *(argv or sys.argv[1:])])
    path = write_outputs(result, args.out, command)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
