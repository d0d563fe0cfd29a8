"""Sentences with a pause in the middle: how often an endpoint rule cuts a turn short.

Takes real sentences from ../shared/speech, finds the quietest gap between words in the
middle of each (35-65% of the way through), and inserts silence there: 400 ms (shorter than
the fixed endpoint) and 700 ms (longer). Writes the clips and a manifest for `eval`:

    .venv/bin/python -m bench.pauses                  # -> .cache/pauses/manifest.jsonl
    STT_ENDPOINT_MODE=adaptive .venv/bin/stt-streaming eval .cache/pauses/manifest.jsonl \\
        --speed 1 --out bench/results/pauses-adaptive

A clip whose sentence comes back as more than one final was cut at its pause.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from stt_worker.core.vad import FRAME_SAMPLES
from stt_worker.runtime.publisher import read_wav

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"
OUT = ROOT / ".cache" / "pauses"
RATE = 16_000
SENTENCES = (
    "lj_LJ001-0006.wav",
    "ls_1089-134691-0001.wav",
    "ls_1089-134686-0000.wav",
    "ls_1089-134686-0002.wav",
    "noisy10db_lj_LJ001-0004.wav",
)
PAUSES_MS = (400, 700)


def quietest_gap(samples: np.ndarray) -> int:
    """Sample index of the quietest 20 ms frame in the middle of the speech."""
    usable = samples[: samples.size // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.float64)
    energy = (usable.reshape(-1, FRAME_SAMPLES) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= 0.05 * energy.max())
    first, last = int(loud[0]), int(loud[-1])
    low, high = first + int(0.35 * (last - first)), first + int(0.65 * (last - first))
    return (low + int(np.argmin(energy[low:high]))) * FRAME_SAMPLES


def build(out: Path = OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        entry["file"]: entry["text"]
        for entry in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines())
    }
    lines = []
    for name in SENTENCES:
        samples, rate = read_wav(SPEECH / name)
        assert rate == RATE, f"{name}: {rate} Hz"
        samples = samples.reshape(-1)
        at = quietest_gap(samples)
        for pause_ms in PAUSES_MS:
            silence = np.zeros(pause_ms * RATE // 1000, np.int16)
            clip = np.concatenate([samples[:at], silence, samples[at:]])
            path = out / f"pause{pause_ms}_{name}"
            with wave.open(str(path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(RATE)
                wav.writeframes(clip.astype("<i2").tobytes())
            lines.append(json.dumps({"file": path.name, "text": texts[name], "pause_s": at / RATE}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


if __name__ == "__main__":
    print(build())
