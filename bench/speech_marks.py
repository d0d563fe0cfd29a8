"""Where speech starts and ends in a clip, read from the audio itself.

Latency benchmarks measure from the real end of the last word (and to the first partial from
the real start of the first), not from the end of a file that may carry trailing silence.
A 10 ms frame counts as speech when its energy is within `DYNAMIC_RANGE_DB` of the clip's
loudest frame and `FLOOR_MARGIN_DB` above its noise floor (the quietest tenth of its frames),
so the soft tails of words (fricatives, final stops) count on clean read speech and the
background of a noisy recording does not.

    .venv/bin/python -m bench.speech_marks FILE.wav ...   # prints start and end per file
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAME_S = 0.010
DYNAMIC_RANGE_DB = 40.0
FLOOR_MARGIN_DB = 12.0


@dataclass(frozen=True)
class SpeechSpan:
    start_s: float  # start of the first speech frame
    end_s: float  # end of the last speech frame: the end of the last word


def frame_db(samples: np.ndarray, rate: int) -> np.ndarray:
    """Energy of each whole 10 ms frame, in dB (int16 or float samples)."""
    size = int(rate * FRAME_S)
    usable = np.asarray(samples, dtype=np.float64).reshape(-1)
    usable = usable[: usable.size // size * size].reshape(-1, size)
    return 10 * np.log10((usable**2).mean(axis=1) + 1e-9)


def speech_span(samples: np.ndarray, rate: int) -> SpeechSpan:
    """The span from the first to the last frame loud enough to be speech."""
    loud = np.flatnonzero(loud_frames(samples, rate))
    return SpeechSpan(float(loud[0]) * FRAME_S, float(loud[-1] + 1) * FRAME_S)


def loud_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    """Which whole 10 ms frames are loud enough to be speech (bool per frame)."""
    db = frame_db(samples, rate)
    if db.size == 0:
        raise ValueError("no whole 10 ms frame of audio")
    floor = float(np.percentile(db, 10))
    threshold = max(float(db.max()) - DYNAMIC_RANGE_DB, floor + FLOOR_MARGIN_DB)
    return db >= threshold


def main(argv: list[str]) -> None:
    from stt_worker.runtime.publisher import read_wav

    for name in argv:
        samples, rate = read_wav(Path(name))
        span = speech_span(samples, rate)
        duration = samples.shape[0] / rate
        print(f"{name}: speech {span.start_s:.2f}-{span.end_s:.2f} s of {duration:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
