"""Benchmark: WER and latency of encoder window sizes against faster-whisper's 30 s window.

For every clip in the speech manifest it runs (a) `faster_whisper.WhisperModel.transcribe`
(fixed 30 s window, beam 1, no timestamps, no VAD, temperature 0 so both sides decode
greedily once) and (b) `FasterWhisperEngine` under several `WindowPolicy` choices, then
prints a markdown table of corpus WER and mean inference time per clip.

Clips longer than 30 s (long_lj, 36 s) are decoded whole: both sides cut them into
consecutive 30 s windows, so only the 6 s remainder sees the policy under test.

Scoring uses Whisper's English normaliser (`pip install whisper-normalizer`).

    .venv/bin/python bench/window_accuracy.py [--model tiny.en] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
from faster_whisper import WhisperModel
from whisper_normalizer.english import EnglishTextNormalizer

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions
from stt_worker.engines.faster_whisper import FasterWhisperEngine, WindowPolicy
from stt_worker.engines.models import resolve_model_path

SPEECH_DIR = Path("/work/shared/speech")
# Voice-assistant utterances; the 36 s clip's time is mostly its full first 30 s window.
SHORT_SAMPLES = 15 * 16_000
POLICIES: dict[str, WindowPolicy] = {
    "no padding": WindowPolicy(pad_s=0.0, bucket_s=0.02),
    "+1 s": WindowPolicy(pad_s=1.0, bucket_s=0.02),
    "+2 s": WindowPolicy(pad_s=2.0, bucket_s=0.02),
    "+1 s, 2 s buckets": WindowPolicy(pad_s=1.0, bucket_s=2.0),
    "+2 s, 2 s buckets": WindowPolicy(pad_s=2.0, bucket_s=2.0),
    "5 s buckets": WindowPolicy(pad_s=0.0, bucket_s=5.0),
    "+1 s, 5 s buckets": WindowPolicy(pad_s=1.0, bucket_s=5.0),
    "full 3000 frames": WindowPolicy(pad_s=30.0, bucket_s=30.0),
}


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    text: str
    audio: np.ndarray


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    wer: float
    mean_s: float
    short_mean_s: float
    hypotheses: list[str]


def load_clips(speech_dir: Path) -> list[Clip]:
    clips = []
    for line in (speech_dir / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        with wave.open(str(speech_dir / entry["file"])) as wav:
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        clips.append(Clip(entry["file"], entry["text"], pcm.astype(np.float32) / 32768.0))
    return clips


def measure(label: str, fn: Callable[[np.ndarray], str], clips: list[Clip], repeats: int) -> Row:
    fn(clips[0].audio)  # warm-up: first call allocates buffers
    hypotheses, times = [], []
    for clip in clips:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            text = fn(clip.audio)
            runs.append(time.perf_counter() - started)
        hypotheses.append(text)
        times.append(statistics.median(runs))
    short = [t for t, c in zip(times, clips, strict=True) if len(c.audio) <= SHORT_SAMPLES]
    return Row(
        label,
        corpus_wer(clips, hypotheses),
        statistics.mean(times),
        statistics.mean(short),
        hypotheses,
    )


_normalise = EnglishTextNormalizer()


def corpus_wer(clips: list[Clip], hypotheses: list[str]) -> float:
    return jiwer.wer([_normalise(c.text) for c in clips], [_normalise(h) for h in hypotheses])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speech-dir", type=Path, default=SPEECH_DIR)
    args = parser.parse_args()

    settings = load_settings(whisper_model_size=args.model, whisper_language="en")
    clips = load_clips(args.speech_dir)
    path = resolve_model_path(args.model, settings.whisper_model_cache_dir)
    rows = []

    baseline = WhisperModel(
        str(path), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1
    )

    def offline(audio: np.ndarray) -> str:
        segments, _ = baseline.transcribe(
            audio,
            language="en",
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments)

    rows.append(measure("faster-whisper transcribe (30 s)", offline, clips, args.repeats))

    for label, policy in POLICIES.items():
        engine = FasterWhisperEngine(settings, window=policy, model_path=path)
        options = DecodeOptions()
        rows.append(
            measure(
                f"ours, {label}",
                lambda audio, e=engine, o=options: e.transcribe_blocking(audio, o).text,
                clips,
                args.repeats,
            )
        )
        engine.close()

    print(f"model {args.model}, {len(clips)} clips, median of {args.repeats} runs per clip\n")
    print("| window | WER | mean s, all | mean s, clips <= 15 s | vs 30 s (<= 15 s) |")
    print("| --- | --- | --- | --- | --- |")
    base_s = rows[0].short_mean_s
    for r in rows:
        print(
            f"| {r.label} | {r.wer:.3f} | {r.mean_s:.3f} | {r.short_mean_s:.3f} "
            f"| {r.short_mean_s / base_s:.2f}x |"
        )

    print("\nPer-clip WER\n")
    print("| clip | s | " + " | ".join(r.label.removeprefix("ours, ") for r in rows) + " |")
    print("| --- " * (len(rows) + 2) + "|")
    for i, clip in enumerate(clips):
        wers = [jiwer.wer(_normalise(clip.text), _normalise(r.hypotheses[i])) for r in rows]
        seconds = len(clip.audio) / 16_000
        print(f"| {clip.name} | {seconds:.1f} | " + " | ".join(f"{w:.2f}" for w in wers) + " |")


if __name__ == "__main__":
    main()
