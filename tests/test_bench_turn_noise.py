"""bench.turn_noise in its quick mode: the real Smart Turn model on two real sentence ends,
each followed by several silences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import turn_noise


def test_tails_are_the_silences_the_docstring_names() -> None:
    spoken = np.ones(16_000, np.int16)
    short = turn_noise.tails(np.concatenate([spoken, np.zeros(800, np.int16)]), 16_000, 2)
    assert list(short) == ["digital zero", "room noise 0", "room noise 1"]  # 50 ms: too short
    long = turn_noise.tails(np.concatenate([spoken, np.full(8_000, 3, np.int16)]), 16_000, 1)
    assert list(long) == ["digital zero", "own recording", "room noise 0"]
    assert all(tail.size == turn_noise.TAIL_S * 16_000 for tail in long.values())
    assert (long["own recording"] == 3).all() and not long["digital zero"].any()
    assert not np.array_equal(short["room noise 0"], short["room noise 1"])


def test_quick_run_shows_a_steady_end_and_one_that_swings_with_the_silence(tmp_path: Path):
    assert turn_noise.main(["--quick", "--out", str(tmp_path / "tn")]) == 0
    data = json.loads((tmp_path / "tn.json").read_text())
    assert data["meta"]["seeds"] == 3 and data["points_ms"] == list(turn_noise.POINTS_MS)
    steady = data["sentences"]["ls_1089-134691-0000.wav"]  # "He could wait no longer."
    swings = data["sentences"]["ls_1089-134691-0001.wav"]  # "... but he could wait no longer."
    for spread in steady + swings:
        assert 0.0 <= spread["low"] <= spread["mean"] <= spread["high"] <= 1.0, spread
        assert 0.0 <= spread["over_share"] <= 1.0
    # Measured on this model: the short sentence's end is heard as an end whatever follows;
    # the longer one's score moves by more than 0.2 with the silence alone.
    assert all(s["low"] >= 0.9 and s["over_share"] == 1.0 for s in steady)
    assert max(s["high"] - s["low"] for s in swings) > 0.2
    assert "| ls_1089-134691-0001.wav |" in (tmp_path / "tn.md").read_text()
