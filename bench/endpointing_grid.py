"""Turn mode's settings swept together: tuned on one half of the pause set, judged on the other.

Every combination of `GRID`'s values is replayed as the worker builds turn mode from its
settings (`STT_TURN_*`). The tuned point is the one meeting issue 16's cut-off target on the
tuning half with the lowest mean latency over its sentence ends (a half holds only a few, so
every one counts; then the fewest cut-offs); it and the shipped defaults are then scored on
the held-out half, which chose nothing (and, as a check, a point tuned on the held-out half
is scored on the tuning one). The neighbours move one setting at a time away from the
defaults, to show which way each pulls.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from bench.endpointing_rules import Fused, PauseFeatures, decisions, meets_target, score
from bench.pause_halves import HELD_OUT, TUNE
from stt_worker.config import Settings
from stt_worker.core.endpoint import TurnEndpoint
from stt_worker.runtime.sessions import session_config

SAME_AS_OVER = -1.0  # turn_hold_prob's grid value meaning "= turn_over_prob"
GRID: dict[str, tuple[float, ...]] = {
    "turn_over_prob": (0.7, 0.8, 0.85, 0.9, 0.95),
    "turn_hold_prob": (0.3, 0.5, SAME_AS_OVER),
    "turn_end_veto_prob": (0.3, 0.5, 0.7),
    "turn_recheck_veto_prob": (0.7, 0.85, 0.95),
    "turn_check_ms": (60, 80, 120),
    "turn_recheck_ms": (0, 200, 300, 400),
    "turn_max_ms": (800, 1000, 1200),
}
SHORT = {
    "turn_over_prob": "over",
    "turn_hold_prob": "hold",
    "turn_end_veto_prob": "veto",
    "turn_recheck_veto_prob": "recheck veto",
    "turn_check_ms": "check",
    "turn_recheck_ms": "recheck",
    "turn_max_ms": "max",
}


def policy(settings: Settings, values: dict[str, float]) -> TurnEndpoint:
    """Turn mode's policy as the worker builds it from `settings` with `values` laid over."""
    update = {name: _setting(name, value) for name, value in values.items()}
    if update.get("turn_hold_prob") == SAME_AS_OVER:
        update["turn_hold_prob"] = update.get("turn_over_prob", settings.turn_over_prob)
    config = session_config(settings.model_copy(update={**update, "endpoint_mode": "turn"}))
    built = config.endpoint_policy()
    assert isinstance(built, TurnEndpoint)
    return built


def _setting(name: str, value: float) -> float | int:
    return int(value) if name.endswith("_ms") else value


def label(values: dict[str, float]) -> str:
    parts = []
    for name, value in values.items():
        shown = "= over" if value == SAME_AS_OVER else f"{_setting(name, value)}"
        parts.append(f"{SHORT[name]} {shown}{' ms' if name.endswith('_ms') else ''}")
    return ", ".join(parts)


def defaults(settings: Settings) -> dict[str, float]:
    found = {name: float(getattr(settings, name)) for name in GRID}
    if found["turn_hold_prob"] == found["turn_over_prob"]:
        found["turn_hold_prob"] = SAME_AS_OVER
    return found


def scored(
    settings: Settings,
    values: dict[str, float],
    pauses: Sequence[PauseFeatures],
    lengths: Sequence[int],
) -> dict:
    """`values` replayed once, scored on each half: {"settings", "tune", "held-out"}."""
    rule = Fused(values["turn_over_prob"], label(values), policy(settings, values))
    rule.family = "turn mode"
    decided = decisions(rule, pauses)
    found: dict = {"settings": {k: _setting(k, v) for k, v in values.items()}}
    for half in (TUNE, HELD_OUT):
        found[half] = score(rule, [p for p in pauses if p.half == half], lengths, decided)
    return found


def tune(
    settings: Settings, pauses: Sequence[PauseFeatures], lengths: Sequence[int]
) -> dict[str, float] | None:
    """The combination meeting the target on `pauses` with the lowest mean latency over
    their sentence ends (then the fewest cut-offs); None when none meets it."""
    names = list(GRID)
    best, best_key = None, None
    for combo in itertools.product(*GRID.values()):
        values = dict(zip(names, combo, strict=True))
        rule = Fused(values["turn_over_prob"], label(values), policy(settings, values))
        point = score(rule, pauses, lengths)
        if not meets_target(point):
            continue
        key = (point["latency_mean_ms"], point["cut_rate"])
        if best_key is None or key < best_key:
            best, best_key = values, key
    return best


def sweep(settings: Settings, pauses: Sequence[PauseFeatures], lengths: Sequence[int]) -> dict:
    """The point tuned on each half, the defaults and their neighbours, each scored on both
    halves. `tuned` is tuned on the tuning half; `swapped`, the check the other way round, on
    the held-out one."""
    picked = {
        half: tune(settings, [p for p in pauses if p.half == half], lengths)
        for half in (TUNE, HELD_OUT)
    }
    shipped = defaults(settings)
    neighbours = []
    for name, axis in GRID.items():
        for value in axis:
            if value != shipped[name]:
                moved = {**shipped, name: value}
                neighbours.append({"moved": name, **scored(settings, moved, pauses, lengths)})
    return {
        "grid": {name: list(axis) for name, axis in GRID.items()},
        "combinations": len(list(itertools.product(*GRID.values()))),
        "shipped": scored(settings, shipped, pauses, lengths),
        **{
            key: None if picked[half] is None else scored(settings, picked[half], pauses, lengths)
            for key, half in (("tuned", TUNE), ("swapped", HELD_OUT))
        },
        "neighbours": neighbours,
    }
