"""The capacity benchmark end to end in its quick mode: that it runs, not what it measures.

Real nats-server, the real worker and the naive baseline in their own processes, the real
model; a few seconds per phase. Checks that the outputs exist and are well-formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(180)
def test_capacity_bench_quick_run_writes_its_outputs(tmp_path: Path) -> None:
    prefix = tmp_path / "capacity"
    done = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--quick", "--out", str(prefix)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads(prefix.with_suffix(".json").read_text())
    assert {"meta", "targets", "ours", "baseline", "silent", "engines"} <= set(data)
    assert data["meta"]["nproc"] >= 1 and data["meta"]["cpu"]
    assert len(data["meta"]["loadavg_start"]) == 3
    for system in ("ours", "baseline"):
        assert isinstance(data[system]["capacity"], int)
        assert data[system]["steps"], system
        for step in data[system]["steps"]:
            assert {"sessions", "sustained", "latency_ms", "worker_cores", "loadavg_max"} <= set(
                step
            )
    assert data["ours"]["n1"]["overhead"]["finals"] >= 0
    assert [row["sessions"] for row in data["silent"]["steps"]] == [1, 10, 50]
    for row in data["silent"]["steps"]:
        assert row["chunks_per_s"] > 0 and row["rss_mb"] > 0
        assert row["generator"]["ticks"] > 0
    assert data["targets"][0]["target"].startswith("capacity")
    assert data["engines"] and "rtf" in data["engines"][0]

    markdown = prefix.with_suffix(".md").read_text()
    for heading in ("## Targets", "## Capacity", "## Latency", "## Non-inference", "## Engines"):
        assert heading in markdown
    for name in ("capacity_latency.png", "capacity_cpu.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
        assert f"]({name})" in markdown


@pytest.mark.timeout(180)
def test_neighbours_bench_quick_run_writes_its_outputs(tmp_path: Path) -> None:
    prefix = tmp_path / "neighbours"
    done = subprocess.run(
        [sys.executable, "-m", "bench.neighbours", "--quick", "--out", str(prefix)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads(prefix.with_suffix(".json").read_text())
    assert {"meta", "targets", "modes"} <= set(data)
    assert len(data["meta"]["loadavg_start"]) == 3 and data["meta"]["commit"]
    assert list(data["modes"]) == ["audio_200x_1s", "garbage_flood"]
    for mode in data["modes"].values():
        assert {"honest_p95_ratio", "honest_missing", "honest_dropped", "abuser_codes"} <= set(mode)
        assert isinstance(mode["honest_missing"], int) and isinstance(mode["honest_dropped"], int)
        for run in (mode["alone"], mode["beside"]):
            assert run["worker_rss_mb_max"] > 0 and run["generator"]["ticks"] > 0
            assert {"worker_cores", "loadavg_max", "server"} <= set(run)
        assert mode["alone"]["finals"] > 0  # the honest load itself was transcribed
        assert mode["beside"]["abuser_sent"]["messages"] > 0

    markdown = prefix.with_suffix(".md").read_text()
    for heading in ("## Targets", "## Results", "## Verdicts"):
        assert heading in markdown
    for mode in data["modes"]:
        assert f"**{mode}**" in markdown
