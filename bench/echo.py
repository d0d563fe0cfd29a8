"""Double talk: does a one-word command said over the assistant's echo survive cancellation?

Each real "stop" and "no" (tests/data/turns) is said 2 s into each echo path of
bench/turns.py (a real sentence back at 80 ms / -6 dB, 150 ms / -10 dB, 250 ms / -14 dB).
The microphone goes through no canceller or through ours (stt_worker.core.echo, WebRTC AEC3), and
tiny.en transcribes the 1.2 s around the word: a case counts when the word is heard. The
cost of cancellation per 20 ms chunk is timed on the same audio.

    .venv/bin/python -m bench.echo               # writes bench/results/echo.{md,json}
    .venv/bin/python -m bench.echo --livekit     # adds LiveKit's AEC3 (pip install livekit)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.turns import ECHO_PATHS, RATE, ROOT, TURNS, _clip16, _mono, echo_of
from stt_worker.config import load_settings
from stt_worker.core.echo import EchoCanceller
from stt_worker.core.turns import words_of
from stt_worker.engines import create_engine
from stt_worker.engines.base import DecodeOptions

OUT = ROOT / "bench" / "results" / "echo"
CHUNK = RATE // 50
AT_S = 2.0

Canceller = Callable[[np.ndarray, np.ndarray], np.ndarray]


def no_canceller(mic: np.ndarray, played: np.ndarray) -> np.ndarray:
    return mic


def ours(mic: np.ndarray, played: np.ndarray) -> np.ndarray:
    """As the worker does it: each 20 ms of playback, then the 20 ms of microphone."""
    canceller = EchoCanceller()
    out = []
    for offset in range(0, mic.size, CHUNK):
        canceller.playback(played[offset : offset + CHUNK])
        out.append(canceller.process(mic[offset : offset + CHUNK]))
    return np.concatenate(out)


def livekit(mic: np.ndarray, played: np.ndarray) -> np.ndarray:
    """LiveKit's bindings of the same AEC3, which the worker used before."""
    from livekit import rtc

    apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
    out = []
    step = RATE // 100
    for offset in range(0, mic.size - step + 1, step):
        reference = played[offset : offset + step].tobytes()
        apm.process_reverse_stream(rtc.AudioFrame(reference, RATE, 1, step))
        frame = rtc.AudioFrame(mic[offset : offset + step].tobytes(), RATE, 1, step)
        apm.process_stream(frame)
        out.append(np.frombuffer(bytes(frame.data), np.int16))
    return np.concatenate(out)


def measure(cancellers: dict[str, Canceller]) -> dict:
    engine = create_engine(load_settings())
    rng = np.random.default_rng(3)
    rows = []
    try:
        for name, delay_ms, level_db in ECHO_PATHS:
            played, echo = echo_of(name, delay_ms, level_db, rng)
            for path in sorted(TURNS.glob("stop_*.wav")) + sorted(TURNS.glob("no_*.wav")):
                word = path.name.split("_")[0]
                said = _mono(path).astype(np.float64)
                mic = echo.copy()
                at = int(AT_S * RATE)
                mic[at : at + said.size] += said
                mic16 = _clip16(mic)
                row = {"echo": f"{delay_ms} ms {level_db} dB", "clip": path.stem, "word": word}
                for label, cancel in cancellers.items():
                    out = cancel(mic16, played)
                    window = out[int((AT_S - 0.1) * RATE) : int((AT_S + 1.1) * RATE)]
                    audio = window.astype(np.float32) / 32768
                    text = engine.transcribe_blocking(audio, DecodeOptions()).text
                    row[label] = word in words_of(text)
                    row[label + "_text"] = text
                rows.append(row)
    finally:
        engine.close()
    # Cost: the whole -10 dB mix, chunk by chunk, as the worker feeds it.
    played, echo = echo_of(ECHO_PATHS[1][0], ECHO_PATHS[1][1], ECHO_PATHS[1][2], rng)
    mic16 = _clip16(echo)
    costs = {}
    for label, cancel in cancellers.items():
        started = time.perf_counter()
        cancel(mic16, played)
        costs[label] = (time.perf_counter() - started) / (mic16.size / CHUNK) * 1e6
    return {"rows": rows, "us_per_chunk": costs}


def report(result: dict, labels: list[str], meta: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Double talk: one-word commands over the assistant's echo",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['date']}; load average before: {meta['load_before']}",
        "",
        "| canceller | words heard (of "
        + str(len(rows))
        + ") | per echo path | µs per 20 ms chunk |",
        "| --- | ---: | --- | ---: |",
    ]
    for label in labels:
        per_path = ", ".join(
            f"{path}: {sum(r[label] for r in rows if r['echo'] == path)}"
            for path in dict.fromkeys(r["echo"] for r in rows)
        )
        heard = sum(r[label] for r in rows)
        lines.append(f"| {label} | {heard} | {per_path} | {result['us_per_chunk'][label]:.0f} |")
    lines += ["", "| echo | clip | " + " | ".join(labels) + " |", "| --- | --- |"]
    lines[-1] += " --- |" * len(labels)
    for row in rows:
        cells = " | ".join(f"{'yes' if row[x] else 'no'} ({row[x + '_text']!r})" for x in labels)
        lines.append(f"| {row['echo']} | {row['clip']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--livekit", action="store_true", help="compare LiveKit's AEC3 too")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    cancellers: dict[str, Canceller] = {"none": no_canceller, "ours": ours}
    if args.livekit:
        cancellers["livekit"] = livekit
    load_before = os.getloadavg()[0]
    result = measure(cancellers)
    meta = {
        "command": "python -m bench.echo" + (" --livekit" if args.livekit else ""),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": round(load_before, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=2))
    text = report(result, list(cancellers), meta)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
