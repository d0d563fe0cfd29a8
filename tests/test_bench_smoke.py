"""Benchmarks end to end in their quick modes: that they run, not what they measure.

Real nats-server, the real worker in its own process, the real model; seconds per step.
Checks that the outputs exist and are well-formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(command: list[str], timeout_s: float) -> None:
    """`python -m` a bench from the repository root; it must succeed."""
    command = [sys.executable, "-m", *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.timeout(180)
def test_capacity_bench_quick_run_compares_two_configurations(tmp_path: Path) -> None:
    path = tmp_path / "capacity.json"
    command = ["bench.capacity", "--quick", "--json", str(path)]
    # Names that ask for the batching ratio; the variable is passed through whether or not
    # this checkout's worker knows it.
    for config in ("batched=STT_BATCH_MAX=4", "unbatched=STT_BATCH_MAX=1"):
        command += ["--compare", config]
    run_bench(command, 170)

    data = json.loads(path.read_text())
    assert data["meta"]["nproc"] >= 1 and data["meta"]["commit"]
    assert len(data["meta"]["loadavg_start"]) == 3
    assert list(data["configs"]) == ["batched", "unbatched"]
    assert data["configs"]["batched"]["env"] == {"STT_BATCH_MAX": "4"}
    for config in data["configs"].values():
        (step,) = config["steps"]
        assert step["sessions"] == 2 and step["window_s"] == 6.0
        # Real speech reached the real worker and came back as finals inside the window.
        assert step["utterances"] >= 2 and step["p50_ms"] is not None
        assert step["generator"]["ticks"] > 0 and 0.3 < step["talk_fraction"] < 0.9
        assert step["worker_cores"] > 0 and step["foreign_cores"] >= 0
        assert config["sustained"] == (2 if step["sustained"] else 0)
        assert config["first_failed"] == (None if step["sustained"] else 2)
        assert step["not_a_figure"] is True  # a 6 s window
    ratio = data["batching_ratio"]
    assert ratio is None or ratio > 0
    assert set(data["batching_ratio_range"]) == {"low", "high"}

    markdown = path.with_suffix(".md").read_text()
    assert "Not a capacity figure" in markdown  # a 6 s window is no figure
    assert "| batched | **" in markdown and "Batching ratio" in markdown
    assert "(not a figure)" in markdown and "the rungs allow" in markdown


@pytest.mark.timeout(180)
def test_neighbours_bench_quick_run_writes_its_outputs(tmp_path: Path) -> None:
    prefix = tmp_path / "neighbours"
    cpus = sorted(os.sched_getaffinity(0))
    # With two CPUs or more, the worker alone on the last one and the rest on the others.
    pin = ["--worker-cpus", str(cpus[-1])] if len(cpus) > 1 else []
    run_bench(["bench.neighbours", "--quick", "--out", str(prefix), *pin], 170)

    data = json.loads(prefix.with_suffix(".json").read_text())
    assert {"meta", "targets", "modes"} <= set(data)
    assert len(data["meta"]["loadavg_start"]) == 3 and data["meta"]["commit"]
    if pin:
        seen = data["meta"]["cpus"]
        assert seen["worker_seen"] == [cpus[-1]] and seen["others_seen"] == cpus[:-1]
    assert list(data["modes"]) == ["audio_200x_1s", "garbage_flood"]
    for mode in data["modes"].values():
        assert {"honest_p95_ratio", "honest_missing", "honest_dropped", "abuser_codes"} <= set(mode)
        assert isinstance(mode["honest_missing"], int) and isinstance(mode["honest_dropped"], int)
        for run in (mode["alone"], mode["beside"]):
            assert run["worker_rss_mb_max"] > 0 and run["generator"]["ticks"] > 0
            assert {"worker_cores", "loadavg_max", "server"} <= set(run)
            for final in run["slowest"]:  # the tail's finals, slowest first
                assert final["latency_ms"] > 0 and final["session"] in range(2)
        assert mode["alone"]["finals"] > 0  # the honest load itself was transcribed
        assert mode["beside"]["abuser_sent"]["messages"] > 0
    # A flood also runs as a control: the same flood drained by a sink, not the worker.
    assert data["modes"]["audio_200x_1s"]["control"] is None
    flood = data["modes"]["garbage_flood"]
    control = flood["control"]
    assert control["label"] == "control" and control["finals"] > 0
    assert control["abuser_sent"]["sink"]["bytes"] > 0 and not control["abuser_told"]
    assert flood["control_p95_ratio"] == round(control["p95_ms"] / flood["alone"]["p95_ms"], 3)
    # nats-server's queue for the worker's connection was found and sampled through the run.
    assert flood["beside"]["worker_pending_mb"]["max_mb"] is not None

    markdown = prefix.with_suffix(".md").read_text()
    for heading in ("## Targets", "## Results", "## Verdicts"):
        assert heading in markdown
    for mode in data["modes"]:
        assert f"**{mode}**" in markdown


@pytest.mark.timeout(120)
def test_batch_profile_quick_run_splits_encoder_and_decoder_time(tmp_path: Path) -> None:
    prefix = tmp_path / "batch_profile"
    run_bench(["bench.batch_profile", "--quick", "--out", str(prefix)], 110)
    rows = json.loads(prefix.with_suffix(".json").read_text())["rows"]
    assert [(row["window_s"], row["batch"]) for row in rows] == [(2.0, 1), (2.0, 2)]
    for row in rows:
        # The real model ran: both halves took time, and the CPU figure counts the engine's
        # own threads (a thread clock would read about 0).
        assert row["encode_ms_per_job"] > 0 and row["generate_ms_per_job"] > 0
        assert row["cpu_ms_per_job"] > 1.0
    lone, paired = rows
    assert lone["gain_per_job"] == 1.0 and lone["cpu_gain_per_job"] == 1.0
    # A gain is a lone job's time over a batched job's.
    assert paired["cpu_gain_per_job"] == pytest.approx(
        lone["cpu_ms_per_job"] / paired["cpu_ms_per_job"]
    )
    assert "| 2 | 2 |" in prefix.with_suffix(".md").read_text()


def test_cpu_lists_read_as_taskset_writes_them() -> None:
    from bench.neighbours import cpu_list

    assert cpu_list("1") == {1}
    assert cpu_list("0-3") == {0, 1, 2, 3}
    assert cpu_list("0, 2-3,5") == {0, 2, 3, 5}
    with pytest.raises(ValueError):
        cpu_list("a-b")


def test_rounds_of_a_mode_are_judged_on_all_their_finals() -> None:
    from bench.neighbours import judged, pooled

    def run(latencies: list[float]) -> dict:
        return {"latencies_ms": latencies, "p95_ms": max(latencies), "errors": {}}

    def one_round(alone: list[float], beside: list[float], order: str, missing: int) -> dict:
        runs = {"alone": run(alone), "beside": run(beside), "control": None}
        counts = {
            "honest_missing": missing,
            "honest_dropped": 0,
            "honest_refused_messages": 0,
            "honest_unclosed": 0,
        }
        return judged("max_chunks_192k_8ch", order, runs, counts, {"rate_limited": 2})

    # One bad round alone would miss (its p95 its worst final); all 40 finals together meet.
    calm = one_round([500.0] * 20, [520.0] * 20, "beside first", 0)
    rough = one_round([500.0] * 20, [510.0] * 19 + [900.0], "alone first", 1)
    assert not rough["met"] and calm["met"]
    mode = pooled([calm, rough])
    assert mode["beside"]["latency_ms"]["n"] == 40
    assert mode["honest_p95_ratio"] == round(mode["honest_p95_ms"] / 500.0, 3) < 1.25
    assert mode["honest_missing"] == 1 and not mode["met"]  # a final lost in any round counts
    assert mode["abuser_codes"] == {"rate_limited": 4}
    assert [r["order"] for r in mode["rounds"]] == ["beside first", "alone first"]
    assert mode["rounds"][1]["honest_p95_ratio"] == 1.8


@pytest.mark.timeout(120)
async def test_flood_reader_measures_nats_server_behind_each_reader() -> None:
    from bench.flood_reader import READERS, measure

    for reader in READERS:
        row = await measure(reader, seconds=1.0)
        assert row["reader"] == reader and row["flood_mb_per_s"] > 0
        # The reader took in the flood, and nats-server's CPU sending it was counted.
        assert row["read_gb"] > 0.01 and row["nats_server_cpu_ms_per_gb"] > 0, row
