"""Chaos benchmark: live sessions of real speech while elastic workers join, drain, die and
roll over. Is any final lost or published twice, and what does it cost in words and latency?

A real nats-server with JetStream and the shipped partition mapping (``ai.voice.stream.*``
onto 12 partitions), real `stt-streaming serve` processes in elastic mode
(``STT_DURABLE=true STT_ELASTIC=true``), the shared speech at real time in 20 ms chunks from
`bench.loadgen`. The same audio (same sessions, same starts) streams twice: a calm run, then
a disrupted run during which, as a Deployment would see them:

- ``join``: one more worker starts (a scale-up);
- ``term``: the oldest worker gets SIGTERM and leaves (a scale-down): it drains and hands
  its partitions over to the others, so the fleet is back to its calm size, and the run
  after the disruption is measured on as many workers as the calm run;
- ``kill``: the oldest worker gets SIGKILL (its leases expire, its audio is replayed) and a
  replacement starts, as a crashed pod's; the next event does not wait for it;
- ``roll``: every worker in turn is replaced, a new one ready before the old one gets SIGTERM
  (a rolling update, one surge pod).

After each, how long until every partition is leased to a live worker in fair shares.
Scored from the consumer's side (`bench.chaos_score`): `lost_finals`, `duplicate_finals`,
WER of each run against the clips' transcripts and their ratio, p95 end of speech -> final
in the calm run, during the disruption (first event to the last rebalance) and after it.
Each lost and duplicate final is named (`bench.chaos_attribution`): session, partition, the
calm run's utterance, the partition's lease holders around it and the nearest fleet action;
each worker's whole log is kept in a temporary folder named in the output (`worker_logs`).

    .venv/bin/python -m bench.chaos [--quick] [--json PATH]

The full run writes ``bench/results/chaos.{md,json}`` (or ``--json`` and the ``.md``
beside it); ``--quick`` (2 workers, 4 sessions, one SIGTERM, one SIGKILL) writes only when
given ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from nats.js import JetStreamContext

from bench.chaos_attribution import (
    Context,
    OwnerLog,
    duplicate_entry,
    lost_entry,
    partition_of,
    table,
)
from bench.chaos_score import finals, score_session
from bench.harness import MAX_LOOP_CLIP_S, Connections, Timelines, connected
from bench.loadgen import LoadRun, plan_sessions, run_load
from stt_worker.config import Settings, load_settings
from stt_worker.core.ownership import fair_share
from stt_worker.core.protocol import Error, SessionClosed
from stt_worker.evaluation.clips import load_clips
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT, Clip
from stt_worker.evaluation.runner import WorkerProcess, machine_info, worker_process
from stt_worker.evaluation.textnorm import normalise, wer
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.pipeline import speech_detectors

logger = logging.getLogger("bench.chaos")

DEFAULT_JSON = ROOT / "bench" / "results" / "chaos.json"
PARTITIONS = 12  # as k8s/nats/nats.conf maps them
SETTLE_WITHIN_S = 60.0
SLOW_DISRUPTED_S = 2.5  # p95_disrupted_s's target: the latencies over it are listed
TARGETS = {
    "lost_finals": "0",
    "duplicate_finals": "0",
    "wer_ratio": "<= 1.1",
    "p95_disrupted_s": "<= 2.5",
    "p95_after_s": "<= 1.1 x p95_calm_after_s",
    "rebalanced_s": "<= 10 per event",
}


@dataclass(frozen=True, slots=True)
class Plan:
    workers: int
    sessions: int
    run_s: float  # audio per session and run
    ramp_s: float  # session starts spread over this
    grace_s: float  # after the `end`s, for the last finals
    lease_s: float  # STT_LEASE_S
    events: tuple[tuple[float, str], ...]  # (seconds into the run, what)


FULL = Plan(
    workers=3, sessions=24, run_s=240.0, ramp_s=10.0, grace_s=60.0, lease_s=6.0,
    events=((15.0, "join"), (35.0, "term"), (55.0, "kill"), (75.0, "roll")),
)  # fmt: skip
QUICK = Plan(
    workers=2, sessions=4, run_s=20.0, ramp_s=2.0, grace_s=20.0, lease_s=3.0,
    events=((3.0, "kill"), (8.0, "term")),
)  # fmt: skip


class Fleet:
    """The worker processes that are ready, by name (their `STT_WORKER_ID`), oldest first,
    and the replacements still starting."""

    def __init__(
        self,
        settings: dict[str, Any],
        stack: contextlib.AsyncExitStack,
        logs: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self._settings = settings  # `load_settings` overrides, the worker id aside
        self._env = env  # environment variables on top (a configuration under test)
        self._stack = stack
        self._logs = logs  # each worker's whole log, `{name}.log`
        self._numbers = iter(range(1000))
        self.live: dict[str, WorkerProcess] = {}
        self._starting: set[asyncio.Task[str]] = set()
        self.actions: list[tuple[float, str]] = []  # (time.time(), what happened to whom)

    async def start(self) -> str:
        name = f"w{next(self._numbers)}"
        settings = load_settings(**self._settings, worker_id=name)
        log = self._logs / f"{name}.log"
        process = worker_process(settings, "faster-whisper", env=self._env, log_path=log)
        self.live[name] = await self._stack.enter_async_context(process)
        self.actions.append((time.time(), f"{name} ready"))
        return name

    async def stop(self, name: str, signum: signal.Signals) -> None:
        """Signal the worker and wait until it is gone (a drain has `STT_DRAIN_TIMEOUT_S`)."""
        pid = self.live.pop(name).pid
        os.kill(pid, signum)
        self.actions.append((time.time(), f"{signum.name} {name}"))
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.actions.append((time.time(), f"{name} gone"))

    async def started(self) -> None:
        """Until every replacement is ready."""
        await asyncio.gather(*self._starting)

    async def disrupt(self, what: str) -> str:
        """One event; returns what was done to whom. As a Deployment and its autoscaler do
        it: a scale-down stops a worker (SIGTERM) with no replacement; a killed worker's
        replacement starts after the kill, and the next event does not wait for it; a
        rollout starts each replacement before it stops the worker it replaces."""
        oldest = next(iter(self.live))
        if what == "join":
            return f"join {await self.start()}"
        if what == "term":
            await self.stop(oldest, signal.SIGTERM)
            return f"term {oldest} (leaves)"
        if what == "kill":
            await self.stop(oldest, signal.SIGKILL)
            replacement = asyncio.create_task(self.start())
            self._starting.add(replacement)
            replacement.add_done_callback(self._starting.discard)
            return f"kill {oldest}, a replacement starts"
        if what == "roll":
            steps = []
            for name in list(self.live):
                new = await self.start()
                await self.stop(name, signal.SIGTERM)
                steps.append(f"{name}->{new}")
            return "roll " + " ".join(steps)
        raise ValueError(what)


async def leases(js: JetStreamContext, bucket: str) -> dict[int, str]:
    kv = await js.key_value(bucket)
    owners: dict[int, str] = {}
    for partition in range(PARTITIONS):
        with contextlib.suppress(Exception):  # no lease: the partition is free
            entry = await kv.get(f"lease.{partition}")
            if entry.value:
                owners[partition] = entry.value.decode()
    return owners


async def settled(js: JetStreamContext, bucket: str, fleet: Fleet) -> float | None:
    """Seconds until every partition is leased to a live worker, each its fair share; None
    when that takes longer than `SETTLE_WITHIN_S` (a result, not a failure of the bench)."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_WITHIN_S:
        owners = collections.Counter((await leases(js, bucket)).values())
        live = list(fleet.live)
        fair = {name: fair_share(PARTITIONS, live, name) for name in live}
        if live and owners == fair:  # every partition leased (the shares add up)
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.2)
    logger.warning("partitions not in fair shares after %.0f s", SETTLE_WITHIN_S)
    return None


@dataclass(slots=True)
class Bench:
    plan: Plan
    settings: Settings
    fleet: Fleet
    nc: Connections
    timelines: Timelines
    owners: OwnerLog = dataclasses.field(default_factory=OwnerLog)  # the disrupted run's


async def watch_owners(bench: Bench) -> None:
    """Poll the leases into `bench.owners` until cancelled."""
    js = bench.nc.results.jetstream()
    while True:
        bench.owners.record(time.time(), await leases(js, bench.settings.ownership_bucket))
        await asyncio.sleep(0.25)


async def stream(
    bench: Bench, label: str, events: bool, ids: Callable[[str, int], list[str]] | None = None
) -> tuple[LoadRun, list[dict[str, Any]]]:
    """One run of every session's audio; with `events`, the plan's disruptions meanwhile;
    `ids(prefix, count)` names the sessions (default ``prefix-0000`` on)."""
    plan, js = bench.plan, bench.nc.results.jetstream()
    await bench.fleet.started()
    await settled(js, bench.settings.ownership_bucket, bench.fleet)
    audio = [bench.timelines(i) for i in range(plan.sessions)]
    prefix = f"{label}-{uuid.uuid4().hex[:6]}"
    plans = plan_sessions(plan.sessions, plan.ramp_s, prefix, audio)
    for session, name in zip(plans, ids(prefix, plan.sessions) if ids else (), strict=False):
        session.session_id = name
    done: list[dict[str, Any]] = []

    async def disrupt(started: float) -> None:
        for at_s, what in plan.events:
            await asyncio.sleep(max(0.0, started + at_s - time.time()))
            began = time.time()
            action = await bench.fleet.disrupt(what)
            took_s = time.time() - began
            rebalanced = await settled(js, bench.settings.ownership_bucket, bench.fleet)
            done.append({"at_s": round(began - started, 1), "event": action,
                         "took_s": round(took_s, 1), "rebalanced_s": rebalanced,
                         "ended_at": time.time()})  # fmt: skip
            logger.info("%s", done[-1])

    chaos = asyncio.create_task(disrupt(time.time() + 0.1)) if events else None
    watcher = asyncio.create_task(watch_owners(bench)) if events else None
    run = await run_load(
        bench.nc.results, bench.nc.publisher, plans, plan.run_s, results_grace_s=plan.grace_s
    )
    if chaos is not None:
        await chaos
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await bench.fleet.started()
    return run, done


def word_errors(runs: LoadRun, clips: dict[str, Clip]) -> tuple[float, int]:
    """Word errors against the clips' transcripts, summed over sessions, and words."""
    errors, words = 0.0, 0
    for plan, heard in zip(runs.plans, finals(runs), strict=True):
        assert plan.audio is not None
        reference = " ".join(clips[name].reference for name in plan.audio.reference.split())
        count = len(normalise(reference).split())
        errors += wer(reference, " ".join(" ".join(f.words) for f in heard)) * count
        words += count
    return errors, words


def twins_of(calm: LoadRun) -> Callable[[str, int], list[str]]:
    """Names for the disrupted run's sessions, each on its calm twin's partition: random
    names would deal the same audio out to the workers differently in the two runs (10 / 7 /
    7 sessions a worker in one, 9 / 8 / 7 in the next), a difference in load that is not the
    disruption's doing."""

    def ids(prefix: str, count: int) -> list[str]:
        names, numbers = [], iter(range(1_000_000))
        for plan in calm.plans[:count]:
            wanted = partition_of(plan.session_id, PARTITIONS)
            names.append(
                next(
                    name
                    for name in (f"{prefix}-{n:04d}" for n in numbers)
                    if partition_of(name, PARTITIONS) == wanted
                )
            )
        return names

    return ids


def p95_s(latencies: list[float]) -> float | None:
    """To the millisecond: `spread` rounds to 0.1 s, too coarse for a 10% margin on 1 s."""
    return round(float(np.percentile(latencies, 95)), 3) if latencies else None


def score(bench: Bench, calm: LoadRun, chaos: LoadRun, events: list[dict[str, Any]], clips):
    calm_finals, chaos_finals = finals(calm), finals(chaos)
    per = [
        score_session(c, d, calm.plans[i], calm, chaos.plans[i], chaos)
        for i, (c, d) in enumerate(zip(calm_finals, chaos_finals, strict=True))
    ]
    context = Context(chaos, bench.owners, bench.fleet.actions, PARTITIONS)
    first = chaos.started_at + bench.plan.events[0][0] if events else chaos.started_at
    last = max((e["ended_at"] for e in events), default=first)
    during = [s for p in per for at, s in p.disrupted_latency if first <= at <= last]
    after = [s for p in per for at, s in p.disrupted_latency if at > last]
    # The calm run over the same span of the same audio: what "after" is measured against.
    since = last - chaos.started_at
    calm_after = [s for p in per for at, s in p.calm_latency if at - calm.started_at > since]
    calm_errors, calm_words = word_errors(calm, clips)
    chaos_errors, chaos_words = word_errors(chaos, clips)
    wer_calm, wer_chaos = calm_errors / max(1, calm_words), chaos_errors / max(1, chaos_words)
    return {
        "lost_finals": sum(len(p.lost) for p in per),
        "duplicate_finals": sum(len(p.duplicates) for p in per),
        "reworded_finals": sum(len(p.reworded) for p in per),
        "wer_ratio": round(wer_chaos / wer_calm, 3) if wer_calm else None,
        "p95_disrupted_s": p95_s(during),
        "p95_calm_s": p95_s([s for p in per for _, s in p.calm_latency]),
        "p95_after_s": p95_s(after),
        "p95_calm_after_s": p95_s(calm_after),
        "wer_calm": round(wer_calm, 4),
        "wer_disrupted": round(wer_chaos, 4),
        "utterances": sum(len(f) for f in finals(calm)),
        "finals_disrupted": sum(len(f) for f in finals(chaos)),
        "latency_counts": {
            "calm": sum(len(p.calm_latency) for p in per),
            "disrupted": len(during),
            "after": len(after),
            "calm_after": len(calm_after),
        },
        "unclosed": {"calm": _unclosed(calm), "disrupted": _unclosed(chaos)},
        # Errors the worker published to the sessions, by code (`rate_limited`: audio shed).
        "errors": {"calm": _errors(calm), "disrupted": _errors(chaos)},
        "per_session": [{"lost": len(p.lost), "duplicates": len(p.duplicates)} for p in per],
        "lost": [
            lost_entry(context, i, calm_finals[i][k], chaos_finals[i])
            for i, p in enumerate(per)
            for k in p.lost
        ],
        "duplicates": [
            duplicate_entry(context, i, chaos_finals[i][j], calm_finals[i])
            for i, p in enumerate(per)
            for j in p.duplicates
        ],
        # The disruption's latencies over its target, each by the fleet action nearest to
        # its end of speech: which event the p95 pays for.
        "slow_disrupted": [
            {"session": i, "latency_s": round(latency, 2), **context.around(chaos.plans[i], at, at)}
            for i, p in enumerate(per)
            for at, latency in p.disrupted_latency
            if first <= at <= last and latency > SLOW_DISRUPTED_S
        ],
        # Heard, but decoded differently: (session, calm words, disrupted words).
        "reworded": [
            [i, " ".join(calm_finals[i][k].words), " ".join(chaos_finals[i][j].words)]
            for i, p in enumerate(per)
            for k, j in p.reworded
        ],
        "events": [{k: v for k, v in e.items() if k != "ended_at"} for e in events],
        # Seconds into the disrupted run: each fleet action, and each change of the leases.
        "actions": [[round(at - chaos.started_at, 1), what] for at, what in bench.fleet.actions],
        "owner_changes": [
            [round(at - chaos.started_at, 1), owners]
            for at, owners in zip(bench.owners.times, bench.owners.owners, strict=True)
        ],
        "disruption_s": round(last - first, 1),
        "generator": {"calm": calm.lateness_summary(), "disrupted": chaos.lateness_summary()},
    }


def _errors(run: LoadRun) -> dict[str, int]:
    return dict(
        collections.Counter(r.message.code for r in run.received if isinstance(r.message, Error))
    )


def _unclosed(run: LoadRun) -> int:
    closed = {r.session_id for r in run.received if isinstance(r.message, SessionClosed)}
    return sum(plan.session_id not in closed for plan in run.plans)


@contextlib.asynccontextmanager
async def fleet_bench(
    plan: Plan, timelines: Timelines, logs: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Bench]:
    """A nats-server with JetStream and the shipped partition mapping, `plan.workers` ready
    elastic workers (`env` on top of their settings, each one's log in `logs`) and the
    bench's connections; all stopped on exit."""
    with tempfile.TemporaryDirectory() as store:
        config = Path(store) / "nats.conf"
        config.write_text(
            f'jetstream {{ store_dir: "{store}/js" }}\n'
            'mappings { "ai.voice.stream.*": "ai.voice.partitioned.'
            f'{{{{partition({PARTITIONS},1)}}}}.{{{{wildcard(1)}}}}" }}\n'
        )
        async with NatsServer(extra_args=("-c", str(config))) as server:
            overrides: dict[str, Any] = dict(
                nats_url=server.url, otel_enabled=False, http_port=0, durable=True,
                elastic=True, partitions=PARTITIONS, lease_s=plan.lease_s,
            )  # fmt: skip
            async with contextlib.AsyncExitStack() as stack:
                fleet = Fleet(overrides, stack, logs, env)
                await asyncio.gather(*(fleet.start() for _ in range(plan.workers)))
                nc = await stack.enter_async_context(connected(server.url))
                yield Bench(plan, load_settings(**overrides), fleet, nc, timelines)


async def bench_all(plan: Plan) -> dict[str, Any]:
    meta = machine_info() | {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    started = time.monotonic()
    detector = speech_detectors(load_settings())
    clips = [c for c in load_clips(DEFAULT_MANIFEST, detector) if c.duration_s <= MAX_LOOP_CLIP_S]
    timelines = Timelines(clips, plan.run_s, detector)
    logs = Path(tempfile.mkdtemp(prefix="chaos-logs-"))  # kept, to grep after the run
    logger.info("worker logs in %s", logs)
    async with fleet_bench(plan, timelines, logs) as bench:
        calm, _ = await stream(bench, "calm", events=False)
        chaos, events = await stream(bench, "chaos", events=True, ids=twins_of(calm))
    result = score(bench, calm, chaos, events, {c.name: c for c in clips})
    # Every final of both runs beside the logs, to read what came instead of a lost one.
    heard = {
        label: [[dataclasses.asdict(final) for final in session] for session in finals(run)]
        for label, run in (("calm", calm), ("disrupted", chaos))
    }
    (logs / "finals.json").write_text(json.dumps(heard, default=_plain))
    meta |= {
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - started, 1),
        "plan": dataclasses.asdict(plan),
        "clips": [c.name for c in clips],
        "model": bench.settings.whisper_model_size,
        "endpoint_silence_ms": bench.settings.endpoint_silence_ms,
        "worker_logs": str(logs),
    }
    return {**result, "targets": TARGETS, "meta": meta}


def heading(title: str, meta: dict[str, Any], command: str) -> list[str]:
    """A fleet bench report's title, command and machine lines, and a blank one."""
    return [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {meta['cpu']}, {meta['nproc']} CPUs; {meta['date']}, commit "
        f"`{meta['commit']}`, {meta['wall_s']} s; load average {meta['loadavg_start']} -> "
        f"{meta['loadavg_end']}",
        "",
    ]


def markdown(result: dict[str, Any], command: str) -> str:
    meta, plan = result["meta"], result["meta"]["plan"]
    rows = [
        ("lost_finals", result["lost_finals"]),
        ("duplicate_finals", result["duplicate_finals"]),
        ("reworded_finals", result["reworded_finals"]),
        ("wer_ratio", f"{result['wer_ratio']} ({result['wer_disrupted']} / {result['wer_calm']})"),
        ("p95_calm_s", result["p95_calm_s"]),
        ("p95_disrupted_s", result["p95_disrupted_s"]),
        ("p95_after_s", result["p95_after_s"]),
        ("p95_calm_after_s", result.get("p95_calm_after_s")),
    ]
    lines = [
        *heading(
            "Chaos: elastic workers join, drain, die and roll under live speech", meta, command
        ),
        f"{plan['workers']} workers (`stt-streaming serve`, {meta['model']}, elastic mode, "
        f"{PARTITIONS} partitions, `STT_LEASE_S={plan['lease_s']}`), {plan['sessions']} "
        f"sessions of the shared speech at real time, {plan['run_s']:.0f} s each, calm run "
        f"then disrupted run of the same audio; {result['utterances']} utterances in the calm "
        "run. WER counts every clip a session named, the one the run's end cut included, in "
        "both runs alike. Each disrupted session has its calm twin's partition; "
        "`p95_calm_after_s` is the calm run over the span `p95_after_s` covers (after the "
        "last rebalance), the same audio on the same partitions.",
        "",
        "| metric | value | target |",
        "| --- | --- | --- |",
        *(f"| {name} | {value} | {TARGETS.get(name, '')} |" for name, value in rows),
        "",
        "| at (s) | event | took (s) | rebalanced after (s) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {e['at_s']} | {e['event']} | {e['took_s']} | {e['rebalanced_s']} |"
            for e in result["events"]
        ),
        "",
        f"Latencies counted: {json.dumps(result['latency_counts'])}; sessions left unclosed: "
        f"{json.dumps(result['unclosed'])}; errors published: {json.dumps(result['errors'])}.",
        *slow_lines(result.get("slow_disrupted", [])),
        *table(result),
    ]
    return "\n".join(lines) + "\n"


def slow_lines(slow: list[dict[str, Any]]) -> list[str]:
    """The disruption's latencies over its target, counted by the nearest fleet action."""
    if not slow:
        return []
    by_action = collections.Counter(entry["nearest"]["action"] for entry in slow)
    counts = ", ".join(f"{what}: {count}" for what, count in by_action.most_common())
    worst = max(entry["latency_s"] for entry in slow)
    return [
        "",
        f"Disrupted latencies over {SLOW_DISRUPTED_S} s: {len(slow)} (worst {worst} s), by the "
        f"fleet action nearest to their end of speech: {counts} (`slow_disrupted` in the JSON).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2 workers, 4 sessions, 20 s")
    parser.add_argument("--json", type=Path, help="JSON output path (.md beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = asyncio.run(bench_all(QUICK if args.quick else FULL))
    command = "python -m bench.chaos" + (" --quick" if args.quick else "")
    report = markdown(result, command)
    print(report)
    path = args.json or (None if args.quick else DEFAULT_JSON)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=_plain))
        path.with_suffix(".md").write_text(report)
    return 0


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


if __name__ == "__main__":
    sys.exit(main())
