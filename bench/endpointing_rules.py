"""End-of-turn rules replayed on one pause's features, and how a sweep of them scores.

Pure: no models, no audio. A pause is what `bench.endpointing` measured along it: the VAD's
silence run (20 ms frames, counted from its first silent frame, as the worker counts it), the
turn check's decode at each of `CHECK_POINTS` frames of silence (text, end probability, its
time) and Smart Turn's probability at each of `TURN_POINTS`. A rule ends the turn at some
time after the run starts, or not at all while the run lasts; a pause that ends because
speech resumed is cut if the rule ended the turn before the first voiced frame after it was
heard.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from stt_worker.core.endpoint import AdaptiveEndpoint, TurnEndpoint
from stt_worker.core.phases import Event

FRAME_MS = 20
CHECK_FRAMES = 4  # turn mode's check (STT_TURN_CHECK_MS, 80 ms): decoded here
ADAPTIVE_FRAMES = 15  # the adaptive mode's check (STT_ENDPOINT_MIN_SILENCE_MS): and here
# Where turn mode's check and recheck may fall in the sweep (60-400 ms): decoded there too.
CHECK_POINTS = (3, CHECK_FRAMES, 6, 10, ADAPTIVE_FRAMES, 20)
TURN_POINTS = (3, 4, 6, 10, 15, 20, 25, 30, 40, 50)  # Smart Turn runs at these silence lengths
FALLBACK_MS = 1000  # a lone model that never says "over" still ends the turn here
# The curve's cut-off rate counts pauses up to this long; a longer one outlasts most rules'
# longest wait, so it is reported by its length only.
CURVE_MAX_PAUSE_MS = 1000


@dataclass(frozen=True)
class Check:
    text: str
    end_prob: float | None
    decode_ms: float


@dataclass(frozen=True)
class PauseFeatures:
    clip: str
    sentence: str
    kind: str  # "inserted", "natural" (a sentence's own pause) or "end" (its last word)
    half: str  # `bench.pause_halves`: "tune" or "held-out"
    pause_ms: int  # the inserted pause's length; 0 for the others
    complete: bool  # the sentence's text ends a sentence (an "end" whose latency counts)
    run_start_ms: float  # the VAD's first silent frame, from the end of the word before
    run_frames: int  # silent frames before speech resumed (the tail's length at an end)
    resumed: bool
    final_ms: float  # a final decode's time: the first check's, on the same audio
    checks: dict[int, Check] = field(default_factory=dict)  # frames -> the check there
    turn: dict[int, float] = field(default_factory=dict)  # frames -> Smart Turn probability
    turn_ms: float = 0.0  # one Smart Turn call's time

    def timed(self, scale: float) -> PauseFeatures:
        """The same pause with every model call's time multiplied by `scale`."""
        checks = {
            frames: replace(check, decode_ms=check.decode_ms * scale)
            for frames, check in self.checks.items()
        }
        return replace(
            self, checks=checks, final_ms=self.final_ms * scale, turn_ms=self.turn_ms * scale
        )

    def in_time(self, at_ms: float) -> bool:
        """Is a decision made `at_ms` into the run made before speech was heard again?"""
        return not self.resumed or at_ms <= (self.run_frames + 1) * FRAME_MS


@dataclass(frozen=True)
class Verdict:
    end_ms: float  # when the turn is ended, from the run's first silent frame
    ready_ms: float  # when the final's text is ready


class Rule:
    family = ""

    def __init__(self, threshold: float, label: str) -> None:
        self.threshold = threshold
        self.label = label

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        raise NotImplementedError


def fixed_end(pause: PauseFeatures, silence_ms: float) -> Verdict | None:
    """Silence alone: the turn ends after `silence_ms`; then the final is decoded."""
    frames = max(1, round(silence_ms / FRAME_MS))
    if pause.resumed and frames > pause.run_frames:
        return None
    at = frames * FRAME_MS
    return Verdict(at, at + pause.final_ms)


class FixedSilence(Rule):
    family = "fixed silence"

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        return fixed_end(pause, self.threshold)


class EndProbability(Rule):
    """The decoder's end probability at the turn check, alone: over when it reaches the
    threshold (the check's text is the final), else `FALLBACK_MS` of silence."""

    family = "decoder end probability"

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        check = pause.checks.get(CHECK_FRAMES)
        if check is not None and check.end_prob is not None and check.end_prob >= self.threshold:
            at = CHECK_FRAMES * FRAME_MS + check.decode_ms
            if pause.in_time(at):
                return Verdict(at, at)
        return fixed_end(pause, FALLBACK_MS)


class SmartTurnAlone(Rule):
    """Smart Turn at each of `TURN_POINTS`: over at the first probability reaching the
    threshold, then the final is decoded; else `FALLBACK_MS` of silence."""

    family = "Smart Turn"

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        for frames, prob in sorted(pause.turn.items()):
            at = frames * FRAME_MS + pause.turn_ms
            if frames * FRAME_MS >= FALLBACK_MS or not pause.in_time(at):
                break
            if prob >= self.threshold:
                return Verdict(at, at + pause.final_ms)
        return fixed_end(pause, FALLBACK_MS)


class Fused(Rule):
    """Turn mode as the worker runs it (`TurnEndpoint`, its `TurnRule`): a check at
    `check_frames`, again at each of `recheck_frames` while the turn holds, each as
    `TurnCheckEngine` runs it (Smart Turn, then the decode when Smart Turn hears an end);
    TURN_OVER ends the turn with the check's text, TURN_HOLDS waits up to `max_frames`,
    TURN_UNDECIDED leaves it to the fixed `silence_frames`."""

    family = "fused (turn mode)"

    def __init__(self, threshold: float, label: str, policy: TurnEndpoint) -> None:
        super().__init__(threshold, label)
        self.policy = policy
        points = {policy.check_frames, *policy.recheck_frames}
        assert points <= set(CHECK_POINTS) & set(TURN_POINTS), "decoded and heard there"

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        policy = self.policy
        for frames in (policy.check_frames, *policy.recheck_frames):
            check = pause.checks.get(frames)
            if check is None or frames not in pause.turn:
                break  # speech resumed before this check
            at = frames * FRAME_MS + pause.turn_ms + check.decode_ms
            if not pause.in_time(at):
                return None
            pause_s = frames * FRAME_MS / 1000
            event = policy.judge(check.text, check.end_prob, pause.turn[frames], pause_s)
            if event is Event.TURN_OVER:
                return Verdict(at, at)
            if event is Event.TURN_UNDECIDED:
                return fixed_end(pause, max(at, policy.silence_frames * FRAME_MS))
        return fixed_end(pause, policy.max_frames * FRAME_MS)


class ShippedAdaptive(Rule):
    """Today's opt-in adaptive mode (`AdaptiveEndpoint` with its default settings), its
    check replayed at `endpoint_min_ms` with the check's decode."""

    family = "adaptive (opt-in today)"

    def __init__(self, min_ms: int, max_ms: int, silence_ms: int, policy: AdaptiveEndpoint) -> None:
        super().__init__(policy.finished_prob, "adaptive, defaults")
        self.min_ms, self.max_ms, self.silence_ms, self.policy = min_ms, max_ms, silence_ms, policy

    def decide(self, pause: PauseFeatures) -> Verdict | None:
        check = pause.checks.get(ADAPTIVE_FRAMES)
        if check is None or (pause.resumed and pause.run_frames * FRAME_MS < self.min_ms):
            return fixed_end(pause, self.silence_ms)
        at = self.min_ms + check.decode_ms
        event = self.policy.judge(check.text, check.end_prob)
        if event is Event.TURN_OVER and pause.in_time(at):
            return Verdict(at, at)
        return fixed_end(pause, self.max_ms if event is Event.TURN_HOLDS else self.silence_ms)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def decisions(rule: Rule, pauses: Sequence[PauseFeatures]) -> dict[str, Verdict | None]:
    """The rule's verdict on each pause (by clip and kind: a whole sentence's own pauses
    share its clip), decided once and scored on any subset."""
    return {_key(p): rule.decide(p) for p in pauses}


def _key(pause: PauseFeatures) -> str:
    return f"{pause.clip}:{pause.kind}:{pause.run_start_ms:.0f}"


def score(
    rule: Rule,
    pauses: Sequence[PauseFeatures],
    lengths: Sequence[int],
    decided: dict[str, Verdict | None] | None = None,
) -> dict:
    """Cut-off rates (inserted pauses, per length; sentences cut at a pause of their own)
    and end-of-turn latency (end of the last word -> final text ready) on the real ends."""
    decided = decisions(rule, pauses) if decided is None else decided
    inserted = [p for p in pauses if p.kind == "inserted"]
    cut = {p.clip: decided[_key(p)] is not None for p in inserted}
    by_length = {
        str(n): _share([cut[p.clip] for p in inserted if p.pause_ms == n]) for n in lengths
    }
    whole = {p.sentence for p in pauses if p.kind == "end"}
    natural = [p for p in pauses if p.kind == "natural" and decided[_key(p)] is not None]
    latency = [_latency(decided, p) for p in pauses if p.kind == "end" and p.complete]
    every_end = [_latency(decided, p) for p in pauses if p.kind == "end"]
    return {
        "family": rule.family,
        "label": rule.label,
        "threshold": rule.threshold,
        "cut_rate": _share([cut[p.clip] for p in inserted if p.pause_ms <= CURVE_MAX_PAUSE_MS]),
        "cut_rate_by_pause_ms": by_length,
        "whole_sentences_cut": sorted({p.sentence for p in natural}),
        "whole_sentences": len(whole),
        "latency_p50_ms": statistics.median(latency),
        "latency_p95_ms": percentile(latency, 95),
        "latency_mean_ms": statistics.fmean(latency),
        "latency_p50_ms_all_ends": statistics.median(every_end),
    }


def _latency(decided: dict[str, Verdict | None], pause: PauseFeatures) -> float:
    verdict = decided[_key(pause)]
    assert verdict is not None, f"never ended {pause.clip}"
    return pause.run_start_ms + verdict.ready_ms


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def operating_point(points: Sequence[dict], max_cut: float) -> dict | None:
    """The lowest median latency among a family's points cutting at most `max_cut` of the
    inserted pauses and no sentence without one (eot-bench's "latency at 5% cut-offs")."""
    fitting = [p for p in points if p["cut_rate"] <= max_cut and not p["whole_sentences_cut"]]
    return min(fitting, key=lambda p: p["latency_p50_ms"], default=None)


def meets_target(point: dict) -> bool:
    """Issue 16's cut-off target: <= 10% of 400 ms and <= 20% of 700 ms pauses cut, none
    in a sentence without an inserted pause."""
    rates = point["cut_rate_by_pause_ms"]
    return (
        (rates.get("400") or 0.0) <= 0.10
        and (rates.get("700") or 0.0) <= 0.20
        and not point["whole_sentences_cut"]
    )
