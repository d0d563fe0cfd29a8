"""How many inferences should run at once on this machine? Measured, not guessed.

Decodes the same utterances (the shared clips) in one run three ways:

- serial: one model using every core (`WHISPER_CPU_THREADS=0`), one decode at a time —
  what the worker does with `STT_MAX_CONCURRENT_INFERENCES=1`;
- parallel-2: two models with one thread each, two decodes at a time;
- serial-1: one model with one thread (the per-decode cost inside parallel-2, alone).

For each: wall time for the whole batch (throughput) and the mean time one decode takes
(what a waiting final feels). Run: `.venv/bin/python bench/concurrency.py [--model tiny.en]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from stt_worker.runtime.publisher import read_wav

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"


def clips(limit_s: float) -> list[np.ndarray]:
    lines = (SPEECH / "manifest.jsonl").read_text().splitlines()
    audio = []
    for entry in map(json.loads, lines):
        samples, _ = read_wav(SPEECH / entry["file"])
        mono = samples.reshape(-1).astype(np.float32) / 32768.0
        audio.append(mono[: int(limit_s * 16_000)])
    return audio


def run(engines: list[FasterWhisperEngine], batch: list[np.ndarray]) -> tuple[float, list[float]]:
    """Decode `batch` with one thread per engine; returns (wall s, per-decode s)."""
    durations: list[float] = []

    def work(index: int) -> None:
        engine = engines[index % len(engines)]
        for audio in batch[index :: len(engines)]:
            result = engine.transcribe_blocking(audio, DecodeOptions())
            durations.append(result.inference_s)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(work, range(len(engines))))
    return time.perf_counter() - started, durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the clips")
    args = parser.parse_args()
    batch = clips(limit_s=15.0) * args.repeat
    audio_s = sum(len(a) for a in batch) / 16_000

    def engine(threads: int) -> FasterWhisperEngine:
        return FasterWhisperEngine(
            load_settings(whisper_model_size=args.model, whisper_cpu_threads=threads)
        )

    setups = {
        "serial (1 model x all cores)": [engine(0)],
        "parallel-2 (2 models x 1 thread)": [engine(1), engine(1)],
        "serial-1 (1 model x 1 thread)": [engine(1)],
    }
    for engines in setups.values():  # warm every model before timing anything
        for each in engines:
            each.transcribe_blocking(batch[0], DecodeOptions())
    rows = []
    for name, engines in setups.items():
        wall, durations = run(engines, batch)
        rows.append((name, wall, statistics.mean(durations), audio_s / wall))
    base = rows[0][1]
    print(
        f"{len(batch)} decodes, {audio_s:.0f} s of audio, model {args.model}, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    print("| setup | batch wall s | vs serial | mean decode s | audio s per wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, wall, mean, speed in rows:
        print(f"| {name} | {wall:.2f} | {wall / base:.2f} | {mean:.3f} | {speed:.1f} |")


if __name__ == "__main__":
    main()
