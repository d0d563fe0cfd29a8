"""The end-of-turn curve (`bench.endpointing`) in its quick mode, on real clips and models.

Its outputs' structure, and what the replay must get right whatever the models say: the
fixed 500 ms rule ends every 700 ms pause and no 250 ms one, and a longer fixed silence
never cuts more nor answers sooner.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stt_worker.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILIES = {
    "fixed silence",
    "decoder end probability",
    "Smart Turn",
    "turn mode, hold < 0.3",
    "turn mode, hold = over",
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
    assert {"meta", "counts", "points", "shipped", "summary", "pauses"} <= set(data)
    assert data["pause_lengths_ms"] == [250, 700]
    assert data["counts"]["sentences"] == 3
    assert data["counts"]["end"] == 3 and data["counts"]["inserted"] >= 6
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
