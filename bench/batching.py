"""Batched decodes against one by one: throughput, and what a lone job pays. Measured, in one run.

The same N jobs (real speech from the shared clips: whole utterances as finals and their
first 1-4 s as partials, mixed lengths, in a fixed shuffled order) are decoded:

- by the engine, as the worker's decode slots would (`STT_MAX_CONCURRENT_INFERENCES` slots,
  each taking the next `size` jobs): one by one (`transcribe`, today's path), then in
  batches of 2, 4 and 8 (`transcribe_batch`). *ratio*: jobs per second against one by one;
- by the scheduler (`InferenceScheduler`, every job of its own session, all queued at once),
  with `STT_BATCH_MAX` 1 (today) and above, and when the finals' results came (finals go
  first; partials that join a final's batch make it longer);
- the same by the engine when every job has one window size (3 s partials of every clip):
  the most batching can give, as the engine batches jobs of one window size together;
- a lone job (nothing else queued) by the scheduler with `STT_BATCH_MAX` 1 and 8: what
  batching costs a single session (a batch of one is decoded exactly as before).

Run: `.venv/bin/python -m bench.batching [--quick] [--json] [--model tiny.en] [--out PREFIX]`
(`--out bench/results/batching` writes `.md` and `.json`). Timings on a shared machine are
noisy; the ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stt_worker.config import load_settings
from stt_worker.core.batching import BatchRule
from stt_worker.core.jobs import Job, JobKind
from stt_worker.engines.base import Audio, DecodeOptions, Engine
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from stt_worker.runtime.publisher import read_wav
from stt_worker.runtime.scheduler import InferenceScheduler

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
SIZES = (1, 2, 4, 8)
PARTIAL_S = (1.0, 2.0, 3.0, 4.0)
FINAL = DecodeOptions()
PARTIAL = DecodeOptions(full_window_retry=False)


@dataclass(frozen=True, slots=True)
class BenchJob:
    audio: Audio
    final: bool

    @property
    def options(self) -> DecodeOptions:
        return FINAL if self.final else PARTIAL


def uniform_jobs(count: int) -> list[BenchJob]:
    """`count` 3 s partials, all of one encoder window."""
    return [BenchJob(job.audio[: 3 * 16_000], final=False) for job in speech_jobs(count)]


def speech_jobs(count: int) -> list[BenchJob]:
    """`count` jobs from the shared clips (cut to 15 s): each clip whole, then its prefixes."""
    pool: list[BenchJob] = []
    for entry in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines()):
        samples, _ = read_wav(SPEECH / entry["file"])
        audio = samples.reshape(-1).astype(np.float32)[: 15 * 16_000] / 32768.0
        pool.append(BenchJob(audio, final=True))
        pool += [BenchJob(audio[: int(s * 16_000)], final=False) for s in PARTIAL_S]
    random.Random(7).shuffle(pool)
    return (pool * (count // len(pool) + 1))[:count]


@dataclass(slots=True)
class Timing:
    """One configuration's runs: wall and process CPU seconds each (CPU time is what a busy
    machine's capacity is made of, and less noisy than wall time when neighbours load it)."""

    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)

    async def run(self, work: Awaitable[list[float]]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.decode_s += await work
        self.walls.append(time.perf_counter() - wall)
        self.cpus.append(time.process_time() - cpu)

    def row(self, jobs: int, baseline: Timing | None) -> dict:
        base = baseline or self
        wall, cpu = statistics.median(self.walls), statistics.median(self.cpus)
        row = {
            "wall_s": wall,
            "cpu_s": cpu,
            "jobs_per_s": jobs / wall,
            "jobs_per_cpu_s": jobs / cpu,
            "ratio_wall": statistics.median(base.walls) / wall,
            "ratio_cpu": statistics.median(base.cpus) / cpu,
        }
        if self.decode_s:
            row["mean_decode_s"] = statistics.mean(self.decode_s)
        return row


async def engine_run(engine: Engine, jobs: list[BenchJob], size: int) -> list[float]:
    """Decode `jobs` on the engine's slots, `size` at a time per slot; each job's decode
    time (a batched job's is its whole batch's)."""
    queue = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    decode_s: list[float] = []

    async def slot() -> None:
        while queue:
            batch = queue.pop(0)
            if size == 1:
                outcomes = [await engine.transcribe(batch[0].audio, batch[0].options)]
            else:
                outcomes = await engine.transcribe_batch([(j.audio, j.options) for j in batch])
            decode_s.extend(o.inference_s for o in outcomes if not isinstance(o, Exception))

    await asyncio.gather(*(slot() for _ in range(engine.parallelism)))
    assert len(decode_s) == len(jobs), "a job failed"
    return decode_s


async def scheduler_run(
    engine: Engine, jobs: list[BenchJob], batch_max: int, finals_s: list[float]
) -> list[float]:
    """All jobs queued at once, each from its own session, until the last result; appends
    when each final's result came (s from the start) to `finals_s`."""
    finished, done, started = asyncio.Event(), [0], time.perf_counter()

    async def on_done(key, job: Job, outcome, wait_s: float) -> None:
        done[0] += 1
        if job.is_final:
            finals_s.append(time.perf_counter() - started)
        if done[0] == len(jobs):
            finished.set()

    rule = BatchRule(max_size=batch_max)
    scheduler = InferenceScheduler(engine, on_done, concurrency=engine.parallelism, batch=rule)
    for index, job in enumerate(jobs):
        pcm = np.round(job.audio * 32767).astype(np.int16)
        kind = JobKind.FINAL if job.final else JobKind.PARTIAL
        scheduler.submit(index, Job(1, kind, (pcm,), 0.0, len(pcm) / 16_000, True))
    runner = asyncio.create_task(scheduler.run())
    await finished.wait()
    runner.cancel()
    return []


async def lone_latency(engine: Engine, job: BenchJob, batch_max: int, repeats: int) -> float:
    """Median time from queueing a lone final to its result, through the scheduler."""
    latencies: list[float] = []
    pcm = np.round(job.audio * 32767).astype(np.int16)
    for _ in range(repeats):
        result = asyncio.Event()

        async def on_done(key, job_: Job, outcome, wait_s: float, result=result) -> None:
            result.set()

        rule = BatchRule(max_size=batch_max)
        scheduler = InferenceScheduler(engine, on_done, concurrency=engine.parallelism, batch=rule)
        runner = asyncio.create_task(scheduler.run())
        await asyncio.sleep(0)
        started = time.perf_counter()
        scheduler.submit("lone", Job(1, JobKind.FINAL, (pcm,), 0.0, len(pcm) / 16_000, True))
        await result.wait()
        latencies.append(time.perf_counter() - started)
        runner.cancel()
    return statistics.median(latencies)


async def measure(model: str, count: int, rounds: int, repeats: int) -> dict:
    settings = load_settings(whisper_model_size=model)
    engine = FasterWhisperEngine(settings)
    await engine.warmup()
    jobs, uniform = speech_jobs(count), uniform_jobs(count)
    await engine_run(engine, jobs[: 2 * max(SIZES)], max(SIZES))  # batch shapes warmed too
    mixed = {size: Timing() for size in SIZES}
    one_window = {size: Timing() for size in (1, max(SIZES))}
    scheduled = {size: Timing() for size in (1, 4, 8)}
    finals_at: dict[int, list[float]] = {size: [] for size in scheduled}
    # Interleaved rounds, medians: a neighbour's burst of load lands on every configuration.
    for _ in range(rounds):
        for size, timing in mixed.items():
            await timing.run(engine_run(engine, jobs, size))
        for size, timing in one_window.items():
            await timing.run(engine_run(engine, uniform, size))
        for size, timing in scheduled.items():
            await timing.run(scheduler_run(engine, jobs, size, finals_at[size]))
    lone = next(job for job in jobs if job.final and len(job.audio) < 6 * 16_000)
    lone_rows = {size: await lone_latency(engine, lone, size, repeats) for size in (1, 8)}
    engine.close()

    def rows(timings: dict[int, Timing], key: str) -> list[dict]:
        return [{key: k, **t.row(count, timings[1])} for k, t in timings.items()]

    return {
        "meta": meta(model, jobs, settings.max_concurrent_inferences) | {"rounds": rounds},
        "engine": rows(mixed, "size"),
        "engine_one_window": rows(one_window, "size"),
        "scheduler": [
            row | {"finals_p50_s": statistics.median(finals_at[row["batch_max"]])}
            for row in rows(scheduled, "batch_max")
        ],
        "lone_final_s": {
            "audio_s": len(lone.audio) / 16_000,
            **{f"batch_max_{k}": v for k, v in lone_rows.items()},
        },
    }


def meta(model: str, jobs: list[BenchJob], slots: int) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "model": model,
        "jobs": len(jobs),
        "finals": sum(job.final for job in jobs),
        "audio_s": round(sum(len(job.audio) for job in jobs) / 16_000, 1),
        "slots": slots,
        "nproc": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg": [round(load, 2) for load in os.getloadavg()],
        "commit": commit,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def markdown(data: dict, command: str) -> str:
    m = data["meta"]
    lines = [
        "# Batched decodes against one by one",
        "",
        f"Command: `{command}`",
        "",
        f"{m['jobs']} jobs ({m['finals']} finals, the rest partial-like prefixes), "
        f"{m['audio_s']} s of audio, {m['model']}, {m['slots']} decode slots; "
        f"{m['nproc']} CPUs ({m['cpu']}), load average {m['loadavg']} at the end; "
        f"commit {m['commit']}, {m['when']}; the median of {m['rounds']} interleaved rounds. "
        "A shared machine: read the ratios, the CPU ones first.",
        "",
        *table(data["engine"], "size", "engine, jobs a call"),
        "",
        "The same, every job of one window size (3 s partials):",
        "",
        *table(data["engine_one_window"], "size", "engine, jobs a call"),
        "",
        *table(data["scheduler"], "batch_max", "scheduler, STT_BATCH_MAX"),
        "",
        "Finals' results, median s from all jobs queued (finals go first): "
        + ", ".join(
            f"STT_BATCH_MAX={row['batch_max']} {row['finals_p50_s']:.2f} s"
            for row in data["scheduler"]
        )
        + ".",
    ]
    lone = data["lone_final_s"]
    lines += [
        "",
        f"A lone final ({lone['audio_s']:.1f} s), queue to result, median: "
        f"STT_BATCH_MAX=1 {lone['batch_max_1'] * 1000:.0f} ms, "
        f"STT_BATCH_MAX=8 {lone['batch_max_8'] * 1000:.0f} ms.",
    ]
    return "\n".join(lines) + "\n"


def table(rows: list[dict], key: str, title: str) -> list[str]:
    decode = "mean_decode_s" in rows[0]
    lines = [
        f"| {title} | wall s | CPU s | jobs/s | jobs/CPU s | ratio (wall) | ratio (CPU) |"
        + (" mean decode s (its batch's) |" if decode else ""),
        "| ---: " * (7 + decode) + "|",
    ]
    for row in rows:
        lines.append(
            f"| {row[key]} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['jobs_per_s']:.1f} "
            f"| {row['jobs_per_cpu_s']:.1f} | {row['ratio_wall']:.2f} | {row['ratio_cpu']:.2f} |"
            + (f" {row['mean_decode_s']:.3f} |" if decode else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="16 jobs, one round")
    parser.add_argument("--json", action="store_true", help="print JSON, not Markdown")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", type=Path, help="write PREFIX.md and PREFIX.json")
    args = parser.parse_args(argv)
    count, rounds, repeats = (16, 1, 3) if args.quick else (48, 3, 9)
    data = asyncio.run(measure(args.model, count, rounds, repeats))
    command = "python -m bench.batching" + (" --quick" if args.quick else "")
    text = markdown(data, command)
    print(json.dumps(data, indent=2) if args.json else text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
