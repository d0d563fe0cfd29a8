"""How steady Smart Turn's verdict is at a sentence's end when only the silence after it changes.

Each sentence of the live turn-latency set that ends a sentence (`bench.turn_latency`) is cut
at the energy end of its last word (`bench.speech_marks`) and followed by one of several
tails: digital zero, the recording's own audio after the last word (where there is 300 ms
of it), and `bench.loadgen`'s room noise (about -72 dBFS) drawn with `--seeds` seeds, as the
live bench's sessions hear it. Smart Turn v3.2 (`engines.smart_turn`, the worker's) scores
the audio up to each of `POINTS_MS` after the last word. Per sentence and point: the lowest,
mean and highest score over the tails, and the share of tails at or above turn mode's
`STT_TURN_OVER_PROB`. The worker counts its checks from the VAD's first silent frame, which
may fall a few frames either side of the energy end, so the points here are approximate.

    .venv/bin/python -m bench.turn_noise [--seeds 8] [--quick] [--out PREFIX]
        # bench/results/turn_noise.{md,json}
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.harness import write_results
from bench.loadgen import room_noise
from bench.pauses import ends_a_sentence
from bench.speech_marks import speech_span
from bench.turn_latency import SENTENCES
from stt_worker.config import load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.vad import WebrtcDetector
from stt_worker.engines.smart_turn import load_smart_turn
from stt_worker.evaluation.clips import load_clips
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT
from stt_worker.evaluation.runner import machine_info

OUT = ROOT / "bench" / "results" / "turn_noise"
POINTS_MS = (80, 120, 200, 300)  # turn mode's check (80) and recheck (200), and around them
OWN_TAIL_MIN_S = 0.3  # the recording's own tail counts when it is at least this long
TAIL_S = max(POINTS_MS) / 1000
QUICK = ("ls_1089-134691-0000.wav", "ls_1089-134691-0001.wav")


@dataclass(frozen=True)
class Spread:
    point_ms: int
    low: float
    mean: float
    high: float
    over_share: float  # tails at or above the over threshold


def tails(samples: np.ndarray, end: int, seeds: int) -> dict[str, np.ndarray]:
    """The silences tried after the last word, each `TAIL_S` long."""
    length = round(TAIL_S * SAMPLE_RATE_HZ)
    found = {"digital zero": np.zeros(length, np.int16)}
    own = samples[end : end + length]
    if own.size >= round(OWN_TAIL_MIN_S * SAMPLE_RATE_HZ):
        found["own recording"] = np.resize(own, length)
    for seed in range(seeds):
        found[f"room noise {seed}"] = room_noise(np.random.default_rng(seed), length)
    return found


def measure(names: tuple[str, ...], seeds: int, over: float) -> dict[str, list[Spread]]:
    turn = load_smart_turn()
    # The clips' VAD labels are not used here: the cheapest detector will do.
    every = load_clips(DEFAULT_MANIFEST, functools.partial(WebrtcDetector, 2), files=names)
    clips = [clip for clip in every if ends_a_sentence(clip.reference)]
    measured = {}
    for clip in clips:
        end = round(speech_span(clip.pcm, SAMPLE_RATE_HZ).end_s * SAMPLE_RATE_HZ)
        spoken = clip.pcm[:end]
        scores = np.array(
            [
                [
                    turn.probability(np.concatenate([spoken, tail[: ms * SAMPLE_RATE_HZ // 1000]]))
                    for ms in POINTS_MS
                ]
                for tail in tails(clip.pcm, end, seeds).values()
            ]
        )
        measured[clip.name] = [
            Spread(
                ms,
                round(float(column.min()), 3),
                round(float(column.mean()), 3),
                round(float(column.max()), 3),
                round(float(np.mean(column >= over)), 3),
            )
            for ms, column in zip(POINTS_MS, scores.T, strict=True)
        ]
    return measured


def report(data: dict) -> str:
    meta = data["meta"]
    lines = [
        "# Smart Turn at sentence ends: the same words, other silences after them",
        "",
        f"Command: `{meta['command']}`; {meta['date']}; commit {meta['commit']}; "
        f"{meta['nproc']} CPUs ({meta['cpu']}).",
        "",
        f"Tails: digital zero, the recording's own (where {OWN_TAIL_MIN_S} s of it follows "
        f"the last word), and {meta['seeds']} draws of the live bench's room noise. "
        f"*Over*: the share of tails scoring at least {meta['over_prob']} "
        "(`STT_TURN_OVER_PROB`), where turn mode's check may end the turn.",
        "",
        "| sentence | "
        + " | ".join(f"{ms} ms: low / mean / high, over" for ms in POINTS_MS)
        + " |",
        "| --- |" + " --- |" * len(POINTS_MS),
    ]
    for name, spreads in data["sentences"].items():
        cells = [
            f"{s['low']:.2f} / {s['mean']:.2f} / {s['high']:.2f}, {s['over_share']:.0%}"
            for s in spreads
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="room-noise draws per sentence")
    parser.add_argument("--quick", action="store_true", help="two sentences, three draws")
    parser.add_argument("--out", type=Path, default=OUT, help="prefix of .md and .json")
    args = parser.parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    over = load_settings().turn_over_prob
    started = time.perf_counter()
    measured = measure(QUICK if args.quick else SENTENCES, seeds, over)
    data = {
        "meta": machine_info()
        | {"seeds": seeds, "over_prob": over, "seconds": round(time.perf_counter() - started)},
        "points_ms": list(POINTS_MS),
        "sentences": {name: [asdict(s) for s in spreads] for name, spreads in measured.items()},
    }
    write_results(args.out, data, report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
