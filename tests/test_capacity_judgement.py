"""The capacity bench's steady-state judgement (`bench.steady`): that each of its three
conditions can fail a step on its own, and what counts as the capacity of a ladder."""

from __future__ import annotations

import argparse

import pytest

from bench.capacity import QUICK, Config, Step, parse_config, summarise
from bench.steady import (
    BOUND_MS,
    GROWTH_LIMIT_MS,
    Utterance,
    capacity,
    first_failure,
    judge,
    not_a_figure,
    ratio_range,
)

WINDOW_S = 45.0


def steady(latency_ms: float = 700.0, count: int = 90) -> list[Utterance]:
    """`count` utterances spread over the window, each `latency_ms` (+-20 ms of jitter)."""
    return [
        Utterance(WINDOW_S * i / count, latency_ms + (20.0 if i % 2 else -20.0))
        for i in range(count)
    ]


def test_a_steady_step_within_the_bound_is_sustained() -> None:
    verdict = judge(steady(), WINDOW_S)
    assert verdict.sustained, verdict.why
    assert verdict.utterances == 90 and verdict.missing == 0
    assert verdict.p95_ms is not None and 700 < verdict.p95_ms < 721
    assert verdict.growth_ms is not None and abs(verdict.growth_ms) < 41


def test_a_growing_backlog_fails_the_step_even_with_p95_under_the_bound() -> None:
    # 500 ms at the window's start to 1,200 ms at its end: every final within 1.5 s, but
    # later and later, the transient the old 20 s steps counted as sustained.
    growing = [Utterance(u.end_s, 500.0 + 700.0 * u.end_s / WINDOW_S) for u in steady()]
    verdict = judge(growing, WINDOW_S)
    assert verdict.p95_ms is not None and verdict.p95_ms <= BOUND_MS
    assert not verdict.sustained
    assert verdict.growth_ms is not None and verdict.growth_ms > GROWTH_LIMIT_MS
    assert "backlog" in verdict.why


def test_a_p95_over_the_bound_fails_the_step() -> None:
    verdict = judge(steady(1600.0), WINDOW_S)
    assert not verdict.sustained and "p95" in verdict.why


def test_one_missing_final_fails_the_step_and_counts_as_infinitely_late() -> None:
    utterances = steady()
    utterances[40] = Utterance(utterances[40].end_s, None)
    verdict = judge(utterances, WINDOW_S)
    assert not verdict.sustained
    assert verdict.missing == 1 and "missing" in verdict.why
    assert verdict.max_ms is None  # the missing one is the maximum


def test_a_percentile_that_reaches_a_missing_final_is_unknown_not_a_number() -> None:
    # 20 utterances: p95 lies between the 19th latency and the missing 20th (infinite), so
    # no finite figure is true; with 40, p95 lies between two finals that came.
    twenty = steady(count=20)
    twenty[-1] = Utterance(twenty[-1].end_s, None)
    assert judge(twenty, WINDOW_S).p95_ms is None
    forty = steady(count=40)
    forty[-1] = Utterance(forty[-1].end_s, None)
    verdict = judge(forty, WINDOW_S)
    assert verdict.p95_ms is not None and 680 <= verdict.p95_ms <= 720
    assert verdict.p50_ms is not None and 680 <= verdict.p50_ms <= 720


def test_a_window_without_utterances_or_without_a_trend_is_not_sustained() -> None:
    assert not judge([], WINDOW_S).sustained
    early_only = [Utterance(1.0, 600.0), Utterance(2.0, 600.0)]
    verdict = judge(early_only, WINDOW_S)
    assert not verdict.sustained and "trend" in verdict.why


def test_capacity_is_the_highest_step_held_below_the_first_failure() -> None:
    assert capacity([(8, True), (16, True), (24, False), (32, False)]) == 16
    # A step that holds above a failure is noise, not capacity.
    assert capacity([(8, True), (16, False), (24, True)]) == 8
    assert capacity([(8, False), (16, False)]) == 0
    assert capacity([(16, True), (8, True)]) == 16


def test_each_capacity_is_an_interval_and_the_ratio_a_range() -> None:
    unbatched = [(8, True), (16, True), (24, True), (32, False)]
    batched = [(8, True), (16, True), (24, False), (32, False)]
    assert first_failure(unbatched) == 32 and first_failure(batched) == 24
    assert first_failure([(8, True), (16, True)]) is None  # only a lower bound
    # Batched capacity in [16, 24), unbatched in [24, 32): the ratio lies in (0.5, 1.0).
    assert ratio_range((16, 24), (24, 32)) == (0.5, 1.0)
    assert ratio_range((16, None), (24, 32)) == (0.5, None)
    assert ratio_range((16, 24), (0, 8)) == (2.0, None)
    assert ratio_range((16, 24), (24, None)) == (None, 1.0)


def step(config: str, sessions: int, sustained: bool) -> Step:
    return Step(
        config, sessions, sustained, "ok" if sustained else "p95", 10, 0, 700.0, 900.0, 950.0,
        0.0, 45.0, 10, sessions, 0.76, 1.8, 0.0, (0.1, 0.1), 1.0, 1.0, {},
    )  # fmt: skip


def test_a_short_window_or_other_work_makes_a_step_no_figure() -> None:
    assert not not_a_figure(45.0, 0.25) and not not_a_figure(60.0, None)
    assert not_a_figure(44.0, 0.0) and not_a_figure(45.0, 0.26)


def test_the_summary_holds_each_capacitys_interval_and_the_ratio_range() -> None:
    steps = {
        "batched": [step("batched", 8, True), step("batched", 16, False)],
        "unbatched": [step("unbatched", 8, True), step("unbatched", 16, True)],
    }
    configs = [Config("batched", {"STT_BATCH_MAX": "4"}), Config("unbatched", {})]
    result = summarise(QUICK, configs, steps)
    assert result["configs"]["batched"]["sustained"] == 8
    assert result["configs"]["batched"]["first_failed"] == 16
    assert result["configs"]["unbatched"]["first_failed"] is None
    assert result["batching_ratio"] == 0.5  # kept beside the range
    assert result["batching_ratio_range"] == {"low": None, "high": 1.0}


def test_compare_configurations_parse_names_and_environment() -> None:
    batched = parse_config("batched=STT_BATCH_MAX=8,STT_BATCH_WAIT_MS=3")
    assert batched.name == "batched"
    assert batched.env == {"STT_BATCH_MAX": "8", "STT_BATCH_WAIT_MS": "3"}
    assert parse_config("default=").env == {}
    for bad in ("nothing", "=STT_X=1", "name=STT_X", "wait-0.5=STT_X=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_config(bad)
