"""Where the gaps between partials come from (`bench.turn_latency`'s `gaps`).

Each partial message says what audio it covered and how long its decode took
(`inference_ms`); the load generator knows when the chunk that completed that audio was
sent, which is about when the worker asked for the partial. So per partial: its decode, the
audio decoded (the window), and what else passed between asking and arrival (waiting for a
decode slot or for the session's previous job, the DSP, the transport). A gap between two
partials longer than the target is put down to the first of:

- `pause`: the speaker paused between the two (no partial is asked for in a pause);
- `spaced`: more new audio than a step between the two: a partial in between was decoded but
  not published (no word yet, nothing new), or the cadence stretched as partials waited;
- `decode`: the later partial's decode alone took longer than the target;
- `waited`: the later partial waited more than `WAITED_MS` before its decode;
- `growth`: none of those: one step of audio plus the later decode's growth over the
  earlier's (and jitter) passed the target.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.harness import spread
from bench.speech_marks import FRAME_S

GAP_TARGET_MS = 300.0
# A quiet stretch this long between two partials is a pause of the speaker (the worker asks
# for none after 60 ms of silence, and its VAD hears some words' soft ends as silence).
PAUSE_MS = 100.0
WAITED_MS = 50.0
# More new audio than a step by this much: a partial between the two went unpublished, or
# the cadence stretched.
SKIP_SLACK_MS = 60.0
WINDOW_BINS_S = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 30.0)


@dataclass(frozen=True, slots=True)
class PartialTiming:
    """One partial of a sentence (times from the sending of the onset's chunk, audio from the
    sentence's onset)."""

    at_ms: float  # arrival
    audio_end_ms: float  # the end of the audio it covered
    window_ms: float  # the audio it decoded
    decode_ms: float  # the message's `inference_ms`
    latency_ms: float  # arrival minus the sending of the chunk its audio ends in

    @property
    def waited_ms(self) -> float:
        return self.latency_ms - self.decode_ms


@dataclass(frozen=True, slots=True)
class Gap:
    gap_ms: float
    audio_step_ms: float  # new audio between the two partials
    decode_ms: float  # the later partial's
    previous_decode_ms: float
    waited_ms: float  # the later partial's
    window_ms: float  # the later partial's
    pause_ms: float  # the longest quiet stretch of the sentence between the two
    cause: str | None  # for gaps over the target


def longest_pause_ms(loud: np.ndarray, start_s: float, end_s: float) -> float:
    """The longest run of quiet 10 ms frames in `loud` (the sentence's, from its start)
    between `start_s` and `end_s`."""
    span = loud[max(0, round(start_s / FRAME_S)) : max(0, round(end_s / FRAME_S))]
    longest = max((len(list(run)) for quiet, run in itertools.groupby(~span) if quiet), default=0)
    return longest * FRAME_S * 1000


def gaps(
    partials: Sequence[PartialTiming], loud: np.ndarray, onset_s: float, step_ms: float
) -> list[Gap]:
    """The gaps between consecutive `partials`; `loud` is the sentence's `loud_frames`,
    `onset_s` its onset in it, `step_ms` the configured audio between two partials."""
    found = []
    for earlier, later in itertools.pairwise(partials):
        gap_ms = later.at_ms - earlier.at_ms
        audio_step_ms = later.audio_end_ms - earlier.audio_end_ms
        pause_ms = longest_pause_ms(
            loud, onset_s + earlier.audio_end_ms / 1000, onset_s + later.audio_end_ms / 1000
        )
        cause = None
        if gap_ms > GAP_TARGET_MS:
            if pause_ms >= PAUSE_MS:
                cause = "pause"
            elif audio_step_ms > step_ms + SKIP_SLACK_MS:
                cause = "spaced"
            elif later.decode_ms > GAP_TARGET_MS:
                cause = "decode"
            elif later.waited_ms > WAITED_MS:
                cause = "waited"
            else:
                cause = "growth"
        found.append(
            Gap(
                round(gap_ms, 1),
                round(audio_step_ms, 1),
                later.decode_ms,
                earlier.decode_ms,
                round(later.waited_ms, 1),
                round(later.window_ms, 1),
                pause_ms,
                cause,
            )
        )
    return found


def breakdown(found: Sequence[Gap], timings: Sequence[PartialTiming]) -> dict[str, Any]:
    """The gaps over the target by cause, the gaps within speech, and decode time against
    the window length."""
    over = [gap for gap in found if gap.cause is not None]
    causes = sorted({gap.cause for gap in over if gap.cause})
    edges = WINDOW_BINS_S
    by_window = {}
    for low, high in itertools.pairwise(edges):
        inside = [t for t in timings if low * 1000 <= t.window_ms < high * 1000]
        if inside:
            by_window[f"{low:g}-{high:g} s"] = {
                "decode_ms": spread([t.decode_ms for t in inside]),
                "waited_ms": spread([t.waited_ms for t in inside]),
            }
    return {
        "gaps": len(found),
        "over_target": len(over),
        "over_target_by_cause": {cause: sum(g.cause == cause for g in over) for cause in causes},
        # The gaps with no pause of the speaker between them: "one every 300 ms of speech".
        "gap_in_speech_ms": spread([g.gap_ms for g in found if g.cause != "pause"]),
        "decode_ms": spread([t.decode_ms for t in timings]),
        "waited_ms": spread([t.waited_ms for t in timings]),
        "decode_growth_ms": spread([g.decode_ms - g.previous_decode_ms for g in found]),
        "by_window": by_window,
    }


def as_dicts(found: Sequence[Gap]) -> list[dict[str, Any]]:
    return [asdict(gap) for gap in found]
