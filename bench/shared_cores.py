"""Shared cores: a fleet of elastic workers on this machine's cores under a calm load, with
worker configurations compared in alternation.

Real processes as `bench.chaos` runs them (nats-server with JetStream and the shipped
partition mapping, `stt-streaming serve` in elastic mode, the shared speech at real time
from `bench.loadgen`), no disruption. The session ids are chosen so that every partition
holds as many sessions as every other (3 workers of 24 sessions: 8 each), so a figure says
what the configuration does, not what the hash dealt: with ids picked at random the
busiest of 3 workers serves 10.5 of 24 sessions on average and 12 or more one time in ten
(`busiest_share`, reported beside the figures).

    python -m bench.shared_cores [--compare NAME=ENV=VAL,ENV=VAL ...] [--rounds 2]
        [--workers 3] [--sessions 24] [--run-s 90] [--json PATH]

Writes ``bench/results/shared_cores.{md,json}`` (or ``--json`` and the ``.md`` beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.capacity import Config, parse_config
from bench.chaos import PARTITIONS, Plan, fleet_bench, heading, stream
from bench.chaos_attribution import partition_of
from bench.chaos_score import finals, score_session
from bench.harness import MAX_LOOP_CLIP_S, Timelines, parse_metrics, spread
from bench.loadgen import SessionPlan
from stt_worker.config import load_settings
from stt_worker.evaluation.clips import load_clips
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT
from stt_worker.evaluation.runner import machine_info
from stt_worker.runtime.pipeline import speech_detectors

logger = logging.getLogger("bench.shared_cores")

DEFAULT_JSON = ROOT / "bench" / "results" / "shared_cores.json"
DEFAULT_CONFIGS = (
    Config("unpaced", {"STT_PARTIAL_CPU_WAIT": "0"}),
    Config("paced", {}),  # the defaults: partials paced by CPU wait (`core/partial_pace`)
    Config("paced-nice-10", {"WHISPER_PARTIAL_NICE": "10"}),
)


def even_ids(prefix: str, count: int, partitions: int = PARTITIONS) -> list[str]:
    """`count` ids ``prefix-NNNN``, as many in each partition (`count` a multiple)."""
    per, held, ids = count // partitions, [0] * partitions, []
    for number in range(1_000_000):
        candidate = f"{prefix}-{number:04d}"
        partition = partition_of(candidate, partitions)
        if held[partition] < per:
            held[partition] += 1
            ids.append(candidate)
            if len(ids) == count:
                return ids
    raise ValueError(f"no even spread of {count} over {partitions}")


def busiest_share(workers: int, sessions: int, trials: int = 2000) -> dict[str, float]:
    """Sessions on the busiest worker when ids are random (uuid4) and each worker holds an
    equal number of partitions: mean and 90th percentile over `trials`."""
    rng = np.random.default_rng(0)
    busiest = []
    for _ in range(trials):
        owner = rng.permutation(PARTITIONS) % workers
        ids = (str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(sessions))
        counts = np.bincount([owner[partition_of(i, PARTITIONS)] for i in ids], minlength=workers)
        busiest.append(int(counts.max()))
    return {"mean": round(float(np.mean(busiest)), 1), "p90": float(np.percentile(busiest, 90))}


async def one_run(config: Config, workers: int, sessions: int, run_s: float) -> dict[str, Any]:
    detector = speech_detectors(load_settings())
    clips = [c for c in load_clips(DEFAULT_MANIFEST, detector) if c.duration_s <= MAX_LOOP_CLIP_S]
    timelines = Timelines(clips, run_s, detector)
    plan = Plan(workers, sessions, run_s, ramp_s=10.0, grace_s=30.0, lease_s=6.0, events=())
    logs = Path(tempfile.mkdtemp(prefix="shared-cores-logs-"))
    async with fleet_bench(plan, timelines, logs, config.env) as bench:
        processes = [psutil.Process(w.pid) for w in bench.fleet.live.values()]
        cpu_before = [sum(p.cpu_times()[:2]) for p in processes]
        started = time.monotonic()
        run, _ = await stream(bench, "calm", events=False, ids=even_ids)
        elapsed = time.monotonic() - started
        used = zip(processes, cpu_before, strict=True)
        cores = sum(sum(p.cpu_times()[:2]) - before for p, before in used)
        metrics = await _metrics([w.probe_url for w in bench.fleet.live.values()])
    per = [
        score_session(heard, heard, run.plans[i], run, run.plans[i], run)
        for i, heard in enumerate(finals(run))
    ]
    latencies = [s for p in per for _, s in p.calm_latency]
    return {
        "config": config.name,
        "env": config.env,
        "latency_s": spread(latencies) | {"mean": round(statistics.fmean(latencies), 3)},
        "worker_cores": round(cores / elapsed, 2),
        **metrics,
        "sessions_per_worker": _sessions_per_worker(run.plans, logs),
    }


async def _metrics(urls: list[str | None]) -> dict[str, Any]:
    """Summed over the fleet: decodes by kind, their mean time and queue wait, speculative
    finals."""
    total: dict[str, float] = {}
    async with httpx.AsyncClient() as client:
        for url in filter(None, urls):
            for key, value in parse_metrics((await client.get(f"{url}/metrics")).text, ()).items():
                total[key] = total.get(key, 0.0) + value
    out: dict[str, Any] = {}
    for kind in ("final", "partial"):
        count = total.get(f"stt_inference_duration_seconds_count:faster-whisper:{kind}", 0.0)
        decode = total.get(f"stt_inference_duration_seconds_sum:faster-whisper:{kind}", 0.0)
        wait = total.get(f"stt_inference_queue_wait_seconds_sum:{kind}", 0.0)
        out[f"{kind}_decodes"] = int(count)
        out[f"{kind}_decode_ms"] = round(1000 * decode / count) if count else None
        out[f"{kind}_wait_ms"] = round(1000 * wait / count) if count else None
    out["speculative_finals"] = int(total.get("stt_speculative_finals_total", 0.0))
    return out


def _sessions_per_worker(plans: list[SessionPlan], logs: Path) -> list[int]:
    ids = {plan.session_id for plan in plans}
    counts = []
    for log in sorted(logs.glob("*.log")):
        opened = {
            json.loads(line).get("session_id")
            for line in log.read_text().splitlines()
            if '"session opened"' in line
        }
        counts.append(len(opened & ids))
    return counts


async def bench_all(configs: list[Config], rounds: int, **plan: Any) -> dict[str, Any]:
    meta = machine_info() | {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    started = time.monotonic()
    runs = []
    for index in range(rounds):
        order = configs if index % 2 == 0 else configs[::-1]  # alternate who goes first
        for config in order:
            runs.append(await one_run(config, **plan) | {"round": index + 1})
            logger.info("%s", json.dumps(runs[-1]))
    meta |= {
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - started, 1),
        "plan": plan,
    }
    return {
        "runs": runs,
        "busiest_share_random_ids": busiest_share(plan["workers"], plan["sessions"]),
        "meta": meta,
    }


def markdown(result: dict[str, Any], command: str) -> str:
    meta, plan = result["meta"], result["meta"]["plan"]
    busiest = result["busiest_share_random_ids"]
    lines = [
        *heading(
            "Shared cores: elastic workers sharing this machine's cores, calm load", meta, command
        ),
        f"{plan['workers']} workers (tiny.en, elastic mode, {PARTITIONS} partitions) on one "
        f"machine, {plan['sessions']} sessions of the shared speech at real time for "
        f"{plan['run_s']:.0f} s, ids spread evenly over the partitions; configurations in "
        "alternation. End of speech -> final in seconds; decodes, mean decode and queue wait "
        "summed over the fleet. With random ids the busiest worker would serve "
        f"{busiest['mean']} sessions on average (p90 {busiest['p90']:.0f}).",
        "",
        "| round | config | p50 | p95 | mean | final decode ms | final wait ms | finals "
        "decoded | speculative finals | partials | worker cores | sessions per worker |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in result["runs"]:
        latency = run["latency_s"]
        lines.append(
            f"| {run['round']} | {run['config']} | {latency['p50']} | {latency['p95']} | "
            f"{latency['mean']} | {run['final_decode_ms']} | {run['final_wait_ms']} | "
            f"{run['final_decodes']} | {run['speculative_finals']} | {run['partial_decodes']} "
            f"| {run['worker_cores']} | {run['sessions_per_worker']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--compare", type=parse_config, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--run-s", type=float, default=90.0)
    parser.add_argument("--json", type=Path, help="JSON output path (.md beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configs = args.compare or list(DEFAULT_CONFIGS)
    result = asyncio.run(
        bench_all(
            configs, args.rounds, workers=args.workers, sessions=args.sessions, run_s=args.run_s
        )
    )
    report = markdown(result, "python -m bench.shared_cores " + " ".join(sys.argv[1:]))
    print(report)
    path = args.json or DEFAULT_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
