"""The end-of-turn curve (`bench.endpointing`) in its quick mode, on real clips and models.

Its outputs' structure, and what the replay must get right whatever the models say: the
fixed 500 ms rule ends every 700 ms pause and no 250 ms one, and a longer fixed silence
never cuts more nor answers sooner; and how the sentences are split into the tuning and
held-out halves.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import endpointing_grid as grid
from bench.pause_halves import HELD_OUT, TUNE, halves, speaker
from stt_worker.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILIES = {
    "fixed silence",
    "decoder end probability",
    "Smart Turn",
    "turn mode, Smart Turn threshold swept",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    prefix = tmp_path_factory.mktemp("endpointing") / "endpointing"
    done = subprocess.run(
        [sys.executable, "-m", "bench.endpointing", "--quick", "--out", str(prefix)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(prefix.with_suffix(".json").read_text()), prefix


@pytest.mark.timeout(180)
def test_quick_run_writes_the_curve_and_its_tables(quick_run: tuple[dict, Path]) -> None:
    data, prefix = quick_run
    assert {"meta", "counts", "points", "shipped", "summary", "pauses", "turn_grid"} <= set(data)
    assert data["pause_lengths_ms"] == [250, 700]
    counts = data["counts"].values()
    assert sum(c["sentences"] for c in counts) == 3 == sum(c["end"] for c in counts)
    assert sum(c["inserted"] for c in counts) >= 6
    assert set(data["halves"].values()) == {"tune", "held-out"}
    assert {p["family"] for p in data["points"]} == FAMILIES
    for point in data["points"]:
        assert 0.0 <= point["cut_rate"] <= 1.0
        assert set(point["cut_rate_by_pause_ms"]) == {"250", "700"}
        assert point["latency_p95_ms"] >= point["latency_p50_ms"] > 0
    assert set(data["summary"]) == FAMILIES
    for pause in data["pauses"]:
        if pause["kind"] == "end":
            assert pause["text"] and 0.0 <= pause["end_prob"] <= 1.0
            assert set(pause["turn"]) >= {"4", "10", "25"}
    grid = data["turn_grid"]
    assert grid["combinations"] == len(list(itertools.product(*grid["grid"].values())))
    assert grid["neighbours"] and {"tune", "held-out"} <= set(grid["shipped"])
    markdown = prefix.with_suffix(".md").read_text()
    assert "## Operating points" in markdown and "](endpointing.png)" in markdown
    assert prefix.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.timeout(180)
def test_the_fixed_rule_ends_long_pauses_and_spares_short_ones(
    quick_run: tuple[dict, Path],
) -> None:
    data, _ = quick_run
    fixed = {p["threshold"]: p for p in data["points"] if p["family"] == "fixed silence"}
    at_500 = fixed[500]
    assert at_500["cut_rate_by_pause_ms"] == {"250": 0.0, "700": 1.0}
    assert at_500 == {**data["shipped"][0], "label": at_500["label"]}
    assert [p["label"] for p in data["shipped"][1:]] == [
        "adaptive, defaults",
        "turn mode, defaults",
    ]
    ordered = [fixed[ms] for ms in sorted(fixed)]
    for shorter, longer in itertools.pairwise(ordered):
        assert longer["cut_rate"] <= shorter["cut_rate"]
        assert longer["latency_p50_ms"] == pytest.approx(shorter["latency_p50_ms"] + 100)
    # No rule answers before the silence it needs: the earliest check's pause (after the
    # VAD's lag), then a decode.
    earliest_check_ms = load_settings().turn_check_ms
    assert min(p["latency_p50_ms"] for p in data["points"]) > earliest_check_ms


def test_the_halves_share_no_utterance_and_both_hear_each_speaker() -> None:
    gaps = {
        "ls_1089-134686-0000": 17,
        "ls_1089-134686-0001": 2,
        "ls_1089-134691-0000": 1,
        "lj_LJ001-0004": 3,
        "noisy10db_lj_LJ001-0004": 9,
        "lj_LJ001-0008": 1,
    }
    complete = {name: not name.endswith("0004") for name in gaps}
    half = halves(gaps, complete)
    assert half["lj_LJ001-0004"] == half["noisy10db_lj_LJ001-0004"]
    for who in ("ls", "lj"):
        assert {h for name, h in half.items() if speaker(name) == who} == {HELD_OUT, TUNE}
    # As many sentence ends in each half, and the long sentences' gaps spread over both.
    for h in (HELD_OUT, TUNE):
        assert sum(complete[name] for name in gaps if half[name] == h) == 2
    assert half["ls_1089-134686-0000"] != half["noisy10db_lj_LJ001-0004"]


def test_the_grid_builds_turn_mode_as_the_worker_does() -> None:
    settings = load_settings()
    moved = grid.policy(
        settings,
        {
            "turn_over_prob": 0.8,
            "turn_hold_prob": grid.SAME_AS_OVER,
            "turn_check_ms": 60,
            "turn_recheck_ms": 0,
            "turn_max_ms": 1200,
        },
    )
    assert (moved.rule.over_prob, moved.rule.hold_prob) == (0.8, 0.8)
    assert (moved.check_frames, moved.recheck_frames, moved.max_frames) == (3, (), 60)
    shipped = grid.policy(settings, grid.defaults(settings))
    assert shipped.rule.hold_prob == settings.turn_hold_prob
    assert shipped.check_frames * 20 == settings.turn_check_ms
