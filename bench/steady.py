"""The capacity bench's judgement of one step: is the worker in a steady state at this load?

Pure functions over what a step measured, so that the judgement has tests of its own
(`tests/test_capacity_judgement.py`) apart from the minutes a real step takes.

A step is judged on the utterances whose speech ENDS inside its measured window (after the
ramp has settled), and is sustained only if all three hold:

- p95 end of speech -> final <= `BOUND_MS`;
- no such utterance is missing its final;
- the latency does not grow across the window: the median of the window's second half at
  most `GROWTH_LIMIT_MS` above its first half's.

Why the latency trend and not the final queue's depth: a backlog that grows is, by
definition, finals that come later and later, which the trend measures on every utterance
(dozens per half), while the `stt_inference_queue_depth` gauge is one instant per sample
that swings with each burst of speech ends, and counts jobs the way the configuration
under test queues them (a batching scheduler holds fewer, larger jobs). The queue depth is
still recorded beside it, as a witness.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOUND_MS = 1500.0  # issue 18: p95 end of speech -> final within 1.5 s
# Half-window medians of a steady step differ by tens of ms; a backlog adds its growth rate
# times half the window (at 45 s, 250 ms is a backlog growing ~11 ms a second).
GROWTH_LIMIT_MS = 250.0
# A step is a capacity figure only with a window this long (shorter ones measure a transient)
# and with at most this many cores used by processes other than the bench's own (worker,
# generator, nats-server): above it, other work shared the machine.
FIGURE_WINDOW_S = 45.0
FOREIGN_CORES_LIMIT = 0.25


@dataclass(frozen=True, slots=True)
class Utterance:
    """One utterance that ended inside a window: when its speech ended (seconds from the
    window's start) and its end of speech -> final (None: no final came)."""

    end_s: float
    latency_ms: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    sustained: bool
    why: str
    utterances: int
    missing: int
    p50_ms: float | None
    p95_ms: float | None  # a missing final counts as infinitely late: None when p95 is one
    max_ms: float | None
    growth_ms: float | None  # median of the second half - median of the first half


def judge(
    utterances: Sequence[Utterance],
    window_s: float,
    bound_ms: float = BOUND_MS,
    growth_limit_ms: float = GROWTH_LIMIT_MS,
) -> Verdict:
    """Whether the step held: see the module's docstring."""
    missing = sum(u.latency_ms is None for u in utterances)
    latencies = [math.inf if u.latency_ms is None else u.latency_ms for u in utterances]
    p50, p95, top = (_percentile(latencies, q) for q in (50, 95, 100))
    middle = window_s / 2
    first = [x for u, x in zip(utterances, latencies, strict=True) if u.end_s < middle]
    second = [x for u, x in zip(utterances, latencies, strict=True) if u.end_s >= middle]
    growth = None
    if first and second:
        growth = statistics.median(second) - statistics.median(first)
    if not utterances:
        held, why = False, "no utterance ended inside the window"
    elif missing:
        held, why = False, f"{missing} of {len(utterances)} utterances missing their final"
    elif p95 is None or p95 > bound_ms:
        held, why = False, f"p95 {_ms(p95)} ms over {bound_ms:.0f} ms"
    elif growth is None:
        held, why = False, "too few utterances to see a trend (one half of the window empty)"
    elif growth > growth_limit_ms:
        held, why = False, f"latency grows {growth:.0f} ms across the window (backlog)"
    else:
        held, why = True, "ok"
    return Verdict(
        held,
        why,
        len(utterances),
        missing,
        p50,
        p95,
        top,
        None if growth is None or not math.isfinite(growth) else round(growth, 1),
    )


def capacity(steps: Sequence[tuple[int, bool]]) -> int:
    """The highest sessions count sustained below the first step that was not (0 if the
    first failed): a step that holds above a failure is luck, not capacity."""
    found = 0
    for sessions, sustained in sorted(steps):
        if not sustained:
            break
        found = sessions
    return found


def not_a_figure(window_s: float, foreign_cores: float | None) -> bool:
    """Whether a step's verdict is no capacity figure: its window too short for the queues to
    settle, or other processes using more than `FOREIGN_CORES_LIMIT` cores during it."""
    return window_s < FIGURE_WINDOW_S or (foreign_cores or 0.0) > FOREIGN_CORES_LIMIT


def first_failure(steps: Sequence[tuple[int, bool]]) -> int | None:
    """The lowest sessions count not sustained: the capacity lies below it and at or above
    `capacity(steps)` (None: every step held, so the capacity has no upper bound)."""
    return min((sessions for sessions, sustained in steps if not sustained), default=None)


def ratio_range(
    batched: tuple[int, int | None], unbatched: tuple[int, int | None]
) -> tuple[float | None, float | None]:
    """The lowest and highest ratio of two capacities each known only as (sustained, first
    failure): a ladder's rungs bound its capacity, so the point ratio of the sustained rungs
    is one value in this range. None for a bound that is unknown (no failure, or 0 held)."""
    (held_b, failed_b), (held_u, failed_u) = batched, unbatched
    low = held_b / failed_u if failed_u else None
    high = failed_b / held_u if failed_b is not None and held_u else None
    return _rounded(low), _rounded(high)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Interpolated between the two latencies around `q`; None when the upper one is a
    missing final (infinite), as any figure between a final and never would be made up."""
    if not values or math.isinf(np.percentile(values, q, method="higher")):
        return None
    return round(float(np.percentile(values, q)), 1)


def _ms(value: float | None) -> str:
    return "inf" if value is None else f"{value:.0f}"
