"""Cut-offs against end-of-turn latency for each end-of-turn rule, on the pause set.

Every pause of `bench.pauses` (each inserted pause, each sentence's own pauses, each
sentence's real end) is measured once: the worker's VAD over the clip gives the silence run;
at each of `CHECK_POINTS` frames of silence the worker's engine decodes the audio so far as a
turn check does (`DecodeOptions(end_probability=True)`: text, end probability, its measured
time); Smart Turn gives its probability at each of `TURN_POINTS`. The rules of
`bench.endpointing_rules` are then replayed on those features over a sweep of their
thresholds: the fixed silence rule, the decoder's end probability alone, Smart Turn alone
and the fused rule (turn mode); `bench.endpointing_grid` sweeps all of turn mode's settings
together. The sentences are split into two halves (`bench.pause_halves`): turn mode's
settings are tuned on one, and every curve is reported on the other. Cut-off rate: the share
of inserted pauses where the turn is ended (overall, per length), and the sentences with no
inserted pause that are cut at one of their own. Latency: end of the last word (energy,
`bench.speech_marks`) -> the final's text ready (the decision, then the final's decode
unless the check's text is the final), median and p95 over the sentences whose text ends a
sentence. Decodes and model outputs are cached in .cache/endpointing, keyed by the audio, so
reruns only replay the rules (delete it to measure the decode times again).

    .venv/bin/python -m bench.endpointing            # bench/results/endpointing.{md,json,png}
    .venv/bin/python -m bench.endpointing --quick --out /tmp/ep   # 3 sentences, 2 lengths
    .venv/bin/python -m bench.endpointing --time-scale 0.3   # model calls 0.3x as long
    .venv/bin/python -m bench.endpointing --extra lj --out bench/results/endpointing-lj

`--extra lj` adds `bench.lj_extra`'s LJ Speech clips to the set (`bench.pauses`), dealt
into the halves after the shared sentences, whose halves do not move.

`--time-scale` replays the cached model times scaled: the times were measured on whatever
machine filled the cache (a loaded one is slower, and a slow verdict that lands after speech
resumed is no cut), so it shows how the curve moves on a faster or quieter one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench import endpointing_grid as grid
from bench import pauses as pause_set
from bench.endpointing_report import write_report
from bench.endpointing_rules import (
    ADAPTIVE_FRAMES,
    CHECK_FRAMES,
    CHECK_POINTS,
    FRAME_MS,
    TURN_POINTS,
    Check,
    EndProbability,
    FixedSilence,
    Fused,
    PauseFeatures,
    Rule,
    ShippedAdaptive,
    SmartTurnAlone,
    score,
)
from bench.pause_halves import HELD_OUT, TUNE, halves
from stt_worker.config import Settings, load_settings
from stt_worker.core.endpoint import AdaptiveEndpoint
from stt_worker.core.vad import FRAME_SAMPLES, VoiceActivityDetector
from stt_worker.runtime.pipeline import speech_detectors
from stt_worker.runtime.sessions import session_config

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "endpointing"
OUT = ROOT / "bench" / "results" / "endpointing"
QUICK_SENTENCES = ("ls_1089-134691-0000", "ls_1089-134686-0001", "lj_LJ001-0008")
QUICK_PAUSES_MS = (250, 700)
FIXED_MS = tuple(range(200, 1501, 100))
PROBS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)
TURN_FAMILY = "turn mode, Smart Turn threshold swept"
SHIPPED_FIXED_MS = 500  # STT_ENDPOINT_SILENCE_MS's default: today's shipped rule


class Measurer:
    """The models, and a cache of what they said about each stretch of audio."""

    def __init__(self, settings: Settings, detector: Callable[[], VoiceActivityDetector]) -> None:
        self.settings = settings
        self.detector = detector
        self._cache_file = CACHE / "features.json"
        self._cache: dict[str, dict] = (
            json.loads(self._cache_file.read_text()) if self._cache_file.exists() else {}
        )
        self._engine = None
        self._turn = None
        self.model = f"{settings.engine}:{settings.whisper_model_size}"

    def speech(self, samples: np.ndarray) -> list[bool]:
        frames = self.detector().push(samples)
        return list(frames.speech)

    def check(self, audio: np.ndarray) -> Check:
        key = f"decode:{self.model}:{_digest(audio)}"
        if key not in self._cache:
            from stt_worker.engines import create_engine
            from stt_worker.engines.base import DecodeOptions

            if self._engine is None:
                self._engine = create_engine(self.settings)
                # The first decodes pay for loading and allocating: keep them out of the times.
                noise = np.random.default_rng(0).normal(0.0, 0.01, 32_000).astype(np.float32)
                for _ in range(2):
                    self._engine.transcribe_blocking(noise, DecodeOptions())
            options = DecodeOptions(full_window_retry=True, end_probability=True)
            result = self._engine.transcribe_blocking(audio.astype(np.float32) / 32768, options)
            self._cache[key] = {
                "text": result.text,
                "end_prob": result.end_prob,
                "ms": result.inference_s * 1000,
            }
        entry = self._cache[key]
        return Check(entry["text"], entry["end_prob"], entry["ms"])

    def turn(self, audio: np.ndarray) -> tuple[float, float]:
        key = f"smart-turn:{_digest(audio)}"
        if key not in self._cache:
            from stt_worker.engines.smart_turn import load_smart_turn

            if self._turn is None:
                self._turn = load_smart_turn()
                self._turn.probability(audio)  # warm, as above
            started = time.perf_counter()
            prob = self._turn.probability(audio)
            self._cache[key] = {"prob": prob, "ms": (time.perf_counter() - started) * 1000}
        entry = self._cache[key]
        return entry["prob"], entry["ms"]

    def save(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self._cache_file.write_text(json.dumps(self._cache))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _digest(audio: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(audio, dtype=np.int16).tobytes()).hexdigest()


def silence_runs(speech: Sequence[bool]) -> list[tuple[int, int]]:
    """(first frame, frames) of each run of unvoiced frames after the first voiced one."""
    runs, start = [], None
    heard = False
    for i, voiced in enumerate([*speech, True]):
        if voiced:
            if start is not None and heard:
                runs.append((start, i - start))
            heard, start = True, None
        elif start is None:
            start = i
    return runs


def measure(
    measurer: Measurer, clip: pause_set.PauseClip, kind: str, run: tuple[int, int], half: str
) -> PauseFeatures:
    """One pause's features along its silence run (`run`: first frame, length)."""
    first, frames = run
    samples = clip.samples
    checks = {
        point: measurer.check(samples[: (first + point) * FRAME_SAMPLES])
        for point in CHECK_POINTS
        if point <= frames
    }
    turn, turn_ms = {}, []
    for point in TURN_POINTS:
        if point <= frames:
            prob, ms = measurer.turn(samples[: (first + point) * FRAME_SAMPLES])
            turn[point] = prob
            turn_ms.append(ms)
    at = (first + CHECK_FRAMES) * FRAME_SAMPLES
    final = checks.get(CHECK_FRAMES) or measurer.check(samples[:at])
    return PauseFeatures(
        clip=clip.name,
        sentence=clip.sentence.name,
        kind=kind,
        half=half,
        pause_ms=clip.pause_ms,
        complete=clip.sentence.complete,
        run_start_ms=first * FRAME_MS - clip.pause_start_s * 1000,
        run_frames=frames,
        resumed=kind != "end",
        final_ms=final.decode_ms,
        checks=checks,
        turn=turn,
        turn_ms=float(np.median(turn_ms)) if turn_ms else 0.0,
    )


def features(measurer: Measurer, clip: pause_set.PauseClip, half: str) -> list[PauseFeatures]:
    """An inserted pause's features; for a sentence as spoken, its own pauses (those long
    enough for any rule to end the turn) and its real end."""
    runs = silence_runs(measurer.speech(clip.samples))
    frame_s = FRAME_MS / 1000
    if clip.gap is not None:
        start, resume = clip.pause_start_s, clip.resume_s or 0.0
        overlapping = [
            r for r in runs if r[0] * frame_s < resume and (r[0] + r[1]) * frame_s > start
        ]
        if not overlapping:  # the VAD heard no silence at all in the pause
            return [measure(measurer, clip, "inserted", (round(start / frame_s), 0), half)]
        longest = max(overlapping, key=lambda r: r[1])
        return [measure(measurer, clip, "inserted", longest, half)]
    end = clip.speech_end_s
    found = [
        measure(measurer, clip, "natural", r, half)
        for r in runs
        if r[1] >= min(CHECK_POINTS) and (r[0] + r[1]) * frame_s < end
    ]
    last = [r for r in runs if (r[0] + r[1]) * frame_s >= end]
    assert last, f"{clip.name}: no silence after the last word"
    return [*found, measure(measurer, clip, "end", last[0], half)]


def rules(settings: Settings) -> list[Rule]:
    """Each family over its thresholds; turn mode over its Smart Turn threshold (`over_prob`,
    and `hold_prob` with it: no undecided band), its other settings the defaults
    (`bench.endpointing_grid` moves those)."""
    swept: list[Rule] = [FixedSilence(ms, f"{ms} ms") for ms in FIXED_MS]
    swept += [EndProbability(p, f"end prob >= {p}") for p in PROBS]
    swept += [SmartTurnAlone(p, f"turn prob >= {p}") for p in PROBS]
    for p in PROBS:
        policy = grid.policy(settings, {"turn_over_prob": p, "turn_hold_prob": p})
        rule = Fused(p, f"over = hold >= {p}", policy)
        rule.family = TURN_FAMILY
        swept.append(rule)
    return swept


def shipped(settings: Settings) -> list[Rule]:
    """The old default (fixed 500 ms), the opt-in adaptive mode and turn mode (the new
    default), each with its default settings, as the worker builds them."""
    adaptive = session_config(settings.model_copy(update={"endpoint_mode": "adaptive"}))
    policy = adaptive.endpoint_policy()
    assert isinstance(policy, AdaptiveEndpoint)
    assert adaptive.endpoint_min_ms == ADAPTIVE_FRAMES * FRAME_MS, "decoded at ADAPTIVE_FRAMES"
    turn = grid.policy(settings, {})
    return [
        FixedSilence(SHIPPED_FIXED_MS, f"{SHIPPED_FIXED_MS} ms (default before turn mode)"),
        ShippedAdaptive(
            adaptive.endpoint_min_ms, adaptive.endpoint_max_ms, adaptive.endpoint_silence_ms, policy
        ),
        Fused(turn.rule.over_prob, "turn mode, defaults", turn),
    ]


def run(quick: bool, out: Path, time_scale: float = 1.0, extra: Sequence[str] = ()) -> dict:
    settings = load_settings()
    names = QUICK_SENTENCES if quick else None
    lengths = QUICK_PAUSES_MS if quick else pause_set.PAUSES_MS
    detector = speech_detectors(settings)
    measurer = Measurer(settings, lambda: VoiceActivityDetector(detector()))
    started = time.perf_counter()
    sentences = pause_set.sentences(names, extra)
    half = halves(
        {s.name: len(pause_set.word_gaps(s)) for s in sentences},
        {s.name: s.complete for s in sentences},
    )
    try:
        measured = [
            found
            for sentence in sentences
            for clip in pause_set.clips(sentence, lengths)
            for found in features(measurer, clip, half[sentence.name])
        ]
    finally:
        measurer.save()
        measurer.close()
    measured = [p.timed(time_scale) for p in measured]
    data = {
        "meta": _meta(settings, quick, time_scale, extra, time.perf_counter() - started),
        "pause_lengths_ms": list(lengths),
        "halves": half,
        "counts": {h: _counts([p for p in measured if p.half == h]) for h in (HELD_OUT, TUNE)},
    }
    for name, key in ((HELD_OUT, ""), (TUNE, "tune_")):
        chosen = [p for p in measured if p.half == name]
        data[f"{key}points"] = [score(rule, chosen, lengths) for rule in rules(settings)]
        data[f"{key}shipped"] = [score(rule, chosen, lengths) for rule in shipped(settings)]
    data["turn_grid"] = grid.sweep(settings, measured, lengths)
    data["pauses"] = [_describe(p) for p in measured]
    write_report(data, out)
    return data


def _counts(measured: Sequence[PauseFeatures]) -> dict:
    kinds = ("inserted", "natural", "end")
    counts = {kind: sum(p.kind == kind for p in measured) for kind in kinds}
    counts["sentences"] = len({p.sentence for p in measured})
    counts["complete_ends"] = sum(p.kind == "end" and p.complete for p in measured)
    return counts


def _describe(p: PauseFeatures) -> dict:
    check = p.checks.get(CHECK_FRAMES)
    return {
        "clip": p.clip,
        "kind": p.kind,
        "half": p.half,
        "run_start_ms": round(p.run_start_ms),
        "run_frames": p.run_frames,
        "text": check.text if check else None,
        "end_prob": None if check is None or check.end_prob is None else round(check.end_prob, 3),
        "decode_ms": round(p.final_ms),
        "turn": {str(k): round(v, 3) for k, v in p.turn.items()},
    }


def _meta(
    settings: Settings, quick: bool, time_scale: float, extra: Sequence[str], seconds: float
) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "command": "python -m bench.endpointing"
        + (" --quick" if quick else "")
        + (f" --time-scale {time_scale}" if time_scale != 1 else "")
        + "".join(f" --extra {source}" for source in extra),
        "time_scale": time_scale,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "engine": settings.engine,
        "model": settings.whisper_model_size,
        "vad": (
            f"webrtcvad, aggressiveness {settings.vad_aggressiveness}"
            if settings.vad_engine == "webrtc"
            else f"Silero, threshold {settings.vad_threshold}"
        ),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 sentences, 250 and 700 ms")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply the cached model times by this"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output prefix (.md/.json/.png)")
    pause_set.extra_option(parser)
    args = parser.parse_args()
    run(args.quick, args.out, args.time_scale, args.extra)
    print(args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
