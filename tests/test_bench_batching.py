"""bench/batching.py in its quick mode: that it runs and writes what it says, not what it
measures (the figures are the bench's, on a quiet machine)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import batching


def test_batching_bench_quick_run_writes_its_outputs(tmp_path: Path) -> None:
    prefix = tmp_path / "batching"
    assert batching.main(["--quick", "--json", "--out", str(prefix)]) == 0
    data = json.loads(prefix.with_suffix(".json").read_text())
    assert [row["size"] for row in data["engine"]] == list(batching.SIZES)
    assert [row["batch_max"] for row in data["scheduler"]] == [1, 4, 8]
    for row in (*data["engine"], *data["engine_one_window"], *data["scheduler"]):
        assert row["jobs_per_cpu_s"] > 0 and row["ratio_cpu"] > 0, row
    assert data["engine"][0]["ratio_cpu"] == 1.0
    assert data["meta"]["jobs"] == 16 and 0 < data["meta"]["finals"] < 16
    assert data["lone_final_s"]["batch_max_1"] > 0
    markdown = prefix.with_suffix(".md").read_text()
    assert "| scheduler, STT_BATCH_MAX |" in markdown and "A lone final" in markdown
