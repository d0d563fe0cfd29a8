"""Where a batched decode's time goes on this CPU: the encoder and the decoder, per job, by
batch size and window length, measured in one run.

`bench.batching` measures what batching gives end to end (jobs per second, the scheduler's
finals); this profile says why: each window length's jobs (real speech, prefixes of the shared
clips) are encoded and decoded as the worker's CTranslate2 engine does it (`encode`, then one
`generate` for the batch), in batches of 1, 2, 4 and 8, on one of the engine's decode threads
(the worker runs `STT_MAX_CONCURRENT_INFERENCES` = 2 slots of one thread each on 2 cores). A
per-job cost that stays flat as the batch grows is work batching cannot share.

Run: `.venv/bin/python -m bench.batch_profile [--model tiny.en] [--rounds 3] [--out PREFIX]`
(`--out bench/results/batch_profile` writes `.md` and `.json`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from stt_worker.runtime.publisher import read_wav

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
SIZES = (1, 2, 4, 8)
WINDOWS_S = (2.0, 5.0, 10.0)
OPTIONS = DecodeOptions(full_window_retry=False)


def clips() -> list[np.ndarray]:
    """The shared clips at least as long as the longest window, as float32 at 16 kHz."""
    found = []
    for entry in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines()):
        samples, _ = read_wav(SPEECH / entry["file"])
        audio = samples.reshape(-1).astype(np.float32) / 32768.0
        if len(audio) >= max(WINDOWS_S) * 16_000:
            found.append(audio)
    return found


def timed(work, rounds: int) -> tuple[float, float]:
    """Median wall and process CPU seconds of `rounds` calls of `work` (process CPU: the
    engine computes on CTranslate2's own threads)."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def profile(
    engine: FasterWhisperEngine,
    audio: list[np.ndarray],
    rounds: int,
    windows_s: tuple[float, ...] = WINDOWS_S,
    sizes: tuple[int, ...] = SIZES,
) -> list[dict]:
    rows = []
    prompt = engine.prompt_tokens("en", OPTIONS.task, None)
    for window_s in windows_s:
        mels = [engine.mel(clip[: int(window_s * 16_000)]) for clip in audio]
        chunks = [mel[:, : mel.shape[-1] - 1] for mel in mels]
        frames = engine.window_frames(chunks[0].shape[-1])
        base: dict | None = None
        for size in sizes:
            batch = [chunks[i % len(chunks)] for i in range(size)]
            encoded = engine.encode(batch, frames)  # warms this shape
            languages = ["en"] * size

            generate = functools.partial(
                engine.generate, encoded, [prompt] * size, frames, languages, [OPTIONS] * size
            )
            generate()
            encode_s, encode_cpu = timed(functools.partial(engine.encode, batch, frames), rounds)
            generate_s, generate_cpu = timed(generate, rounds)
            row = {
                "window_s": window_s,
                "frames": frames,
                "batch": size,
                "encode_ms_per_job": 1000 * encode_s / size,
                "generate_ms_per_job": 1000 * generate_s / size,
                "cpu_ms_per_job": 1000 * (encode_cpu + generate_cpu) / size,
                "batch_ms": 1000 * (encode_s + generate_s),
            }
            base = base or row
            per_job = row["encode_ms_per_job"] + row["generate_ms_per_job"]
            row["gain_per_job"] = (
                base["encode_ms_per_job"] + base["generate_ms_per_job"]
            ) / per_job
            row["cpu_gain_per_job"] = base["cpu_ms_per_job"] / row["cpu_ms_per_job"]
            rows.append(row)
    return rows


def markdown(data: dict) -> str:
    m = data["meta"]
    lines = [
        "# Where a batched decode's time goes (CTranslate2 on this CPU)",
        "",
        f"Command: `{m['command']}`  ",
        f"Machine: {m['cpu']}, {m['nproc']} CPUs; {m['when']}; commit `{m['commit']}`; model "
        f"{m['model']}, one decode thread (as each of the worker's 2 slots); medians of "
        f"{m['rounds']} rounds; load average at the end {m['loadavg']}.",
        "",
        "Per job: the encoder's and the decoder's wall time for one job of a batch (the batch's "
        "time over its size), and the process CPU time (all threads). *gain*: a lone job's "
        "time over a batched job's (wall, then CPU). *batch ms*: what every job of the batch "
        "waits for its result.",
        "",
        "| window s | batch | encode ms/job | generate ms/job | CPU ms/job | gain | CPU gain "
        "| batch ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['window_s']:g} | {r['batch']} | {r['encode_ms_per_job']:.1f} | "
            f"{r['generate_ms_per_job']:.1f} | {r['cpu_ms_per_job']:.1f} | "
            f"{r['gain_per_job']:.2f} | {r['cpu_gain_per_job']:.2f} | {r['batch_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write PREFIX.md and PREFIX.json")
    parser.add_argument("--quick", action="store_true", help="2 s windows, batches of 1 and 2")
    args = parser.parse_args(argv)
    settings = load_settings(whisper_model_size=args.model, whisper_cpu_threads=1)
    engine = FasterWhisperEngine(settings)
    try:
        if args.quick:
            rows = profile(engine, clips(), 1, windows_s=(2.0,), sizes=(1, 2))
        else:
            rows = profile(engine, clips(), args.rounds)
    finally:
        engine.close()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    command = "python -m bench.batch_profile " + " ".join(argv or [])
    data = {
        "meta": {
            "command": command.strip(),
            "model": args.model,
            "rounds": args.rounds,
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "loadavg": [round(load, 2) for load in os.getloadavg()],
            "commit": commit,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "rows": rows,
    }
    report = markdown(data)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
